"""The Linux arm64 stolen-time client (arch/arm64/kernel/paravirt.c), for the model guest.

The PV-time probe, shared by stolen time and LPT (:func:`has_pv_time`): SMCCC >= 1.1,
ARCH_FEATURES(PV_TIME_FEATURES) == 0, PV_TIME_FEATURES(the call) == 0. Each CPU coming online
calls PV_TIME_ST and maps its record; going offline unmaps it, and the steal clock of an
unmapped CPU reads 0.
"""

from __future__ import annotations

from pvtime.abi import smccc
from pvtime.abi.errno import EINVAL, ENXIO
from pvtime.abi.records import STEAL_TIME_OFFSET, RecordError, StolenTimeRecord
from pvtime.abi.widths import s64
from pvtime.guest.machine import GuestCpu


def smccc_version(cpu: GuestCpu) -> int:
    """The SMCCC version as Linux's psci_init_smccc finds it (1.0 when SMCCC_VERSION is absent)."""
    if s64(cpu.hvc(smccc.PSCI_FEATURES, smccc.SMCCC_VERSION)[0]) == smccc.PSCI_NOT_SUPPORTED:
        return 0x10000
    version = cpu.hvc(smccc.SMCCC_VERSION)[0] & 0xFFFF_FFFF  # Linux compares it as a u32
    return version if version >= smccc.SMCCC_VERSION_1_1 else 0x10000


def has_pv_time(cpu: GuestCpu, function: int) -> bool:
    """Whether the hypervisor offers the PV-time call `function` (PV_TIME_ST or PV_TIME_LPT).

    Linux's has_pv_steal_clock with the call as a parameter, preceded by the SMCCC 1.1 conduit
    check: SMCCC >= 1.1, ARCH_FEATURES(PV_TIME_FEATURES) == 0, PV_TIME_FEATURES(function) == 0.
    """
    if smccc_version(cpu) < smccc.SMCCC_VERSION_1_1:
        return False
    if cpu.hvc(smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES)[0] != smccc.SUCCESS:
        return False
    return cpu.hvc(smccc.PV_TIME_FEATURES, function)[0] == smccc.SUCCESS


def has_pv_steal_clock(cpu: GuestCpu) -> bool:
    """Linux's has_pv_steal_clock: the probe for PV_TIME_ST."""
    return has_pv_time(cpu, smccc.PV_TIME_ST)


class PvSteal:
    """Per-CPU stolen-time regions and `para_steal_clock`."""

    def __init__(self) -> None:
        self.enabled = False  # static key paravirt_steal_enabled
        self.regions: dict[int, int] = {}  # cpu -> mapped record address (the published kaddr)
        self.messages: list[str] = []  # what the kernel would pr_warn/pr_info
        self.boot_error = 0  # the boot CPU's online error that failed pv_time_init

    def init(self, cpu: GuestCpu, boot_index: int = 0) -> bool:
        """pv_time_init on the boot CPU: probe, run the online callback on the boot CPU, enable.

        As in Linux, a failed online of the boot CPU fails pv_time_init: the steal clock stays
        the native one (0) and nothing is enabled.
        """
        if not has_pv_steal_clock(cpu):
            return False
        err = self.cpu_online(cpu, boot_index)
        if err:
            self.cpu_offline(boot_index)  # cpuhp_setup_state undoes the state on failure
            self.boot_error = err
            return False
        self.enabled = True
        self.messages.append("arm-pv: using stolen time PV")
        return True

    def cpu_online(self, cpu: GuestCpu, index: int) -> int:
        """stolen_time_cpu_online: 0, or a negative errno."""
        ipa = cpu.hvc(smccc.PV_TIME_ST)[0]
        if s64(ipa) == smccc.NOT_SUPPORTED:
            return -EINVAL
        self.regions[index] = ipa  # published before the check, as Linux does
        try:
            StolenTimeRecord.unpack(cpu.read(ipa, 64)).validate()
        except RecordError as err:
            self.messages.append(f"arm-pv: Unexpected revision or attributes in stolen time data ({err})")
            return -ENXIO
        return 0

    def cpu_offline(self, index: int) -> None:
        """stolen_time_cpu_down_prepare: unpublish, wait for readers (RCU), unmap."""
        self.regions.pop(index, None)

    def steal_clock(self, cpu: GuestCpu, index: int) -> int:
        """para_steal_clock: one 64-bit load of stolen_time, or 0 when unmapped."""
        if not self.enabled:
            return 0  # native_steal_clock
        base = self.regions.get(index)
        if base is None:
            return 0
        return cpu.load64(base + STEAL_TIME_OFFSET)
