"""The Xen driver (xen-pvm, xen-hvm) over the xl toolstack (see docs/hypervisors/xen.md)."""
