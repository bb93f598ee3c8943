"""The LXC hypervisor driver: system containers as instances (see docs/hypervisors/lxc.md)."""
