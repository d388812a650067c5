"""The Linux arm64 guest side of paravirtualized time, for the Python model guest.

Code here sees only what a real guest sees: hypercalls, its own memory and system registers,
through `pvtime.guest.machine.GuestCpu`. It never imports kvm, host or vmm.
"""
