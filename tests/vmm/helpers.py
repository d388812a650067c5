"""Small helpers the VMM tests share."""

from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm.migration import save


def open_vms(kvm: Kvm) -> int:
    """How many VMs are open on `kvm` (an unnamed VM is named after that count)."""
    probe = kvm.create_vm()
    probe.close()
    return int(probe.name.removeprefix("vm"))


def snapshot(pv: int | None = 10**9) -> tuple[Machine, bytes]:
    """A 1 MiB VM with LPT at `pv` and a word of data in RAM, and its one-part stream."""
    m = Machine(Kvm(Host(25_000_000)), MachineConfig("s", memory_mib=1, lpt_pv_hz=pv))
    m.ram[4096:4100] = b"data"
    return m, save(m, now_ns=0)


def rss_kib() -> int:
    """This process's resident set size (VmRSS), in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
