"""Closing a VM fd destroys the VM (kvm_destroy_vm): KVM no longer counts it."""

from pvtime.host import Host
from pvtime.kvm import Kvm


def test_closing_a_vm_destroys_it_and_closing_twice_does_nothing():
    kvm = Kvm(Host())
    a, b = kvm.create_vm(), kvm.create_vm()
    assert (a.name, b.name) == ("vm0", "vm1")  # an unnamed VM is named after the VMs open
    a.close()
    a.close()
    assert kvm.create_vm().name == "vm1"  # one VM open (b)
