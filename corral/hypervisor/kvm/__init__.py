"""Corral hypervisor kvm package."""
