"""AArch64 system-register encodings (op0, op1, CRn, CRm, op2) that guests and the hypervisor share."""

from __future__ import annotations

from typing import NamedTuple


class SysReg(NamedTuple):
    """A system register's MRS/MSR encoding."""

    op0: int
    op1: int
    crn: int
    crm: int
    op2: int


CNTFRQ_EL0 = SysReg(3, 3, 14, 0, 0)
CNTPCT_EL0 = SysReg(3, 3, 14, 0, 1)
CNTVCT_EL0 = SysReg(3, 3, 14, 0, 2)
CNTP_TVAL_EL0 = SysReg(3, 3, 14, 2, 0)
CNTP_CTL_EL0 = SysReg(3, 3, 14, 2, 1)
CNTP_CVAL_EL0 = SysReg(3, 3, 14, 2, 2)
CNTV_TVAL_EL0 = SysReg(3, 3, 14, 3, 0)
CNTV_CTL_EL0 = SysReg(3, 3, 14, 3, 1)
CNTV_CVAL_EL0 = SysReg(3, 3, 14, 3, 2)
CNTKCTL_EL1 = SysReg(3, 0, 14, 1, 0)
MPIDR_EL1 = SysReg(3, 0, 0, 0, 5)

# The EL1 (and EL0 thread-pointer) state a guest kernel holds, which a VMM saves and restores.
SCTLR_EL1 = SysReg(3, 0, 1, 0, 0)
CPACR_EL1 = SysReg(3, 0, 1, 0, 2)
TTBR0_EL1 = SysReg(3, 0, 2, 0, 0)
TTBR1_EL1 = SysReg(3, 0, 2, 0, 1)
TCR_EL1 = SysReg(3, 0, 2, 0, 2)
AFSR0_EL1 = SysReg(3, 0, 5, 1, 0)
AFSR1_EL1 = SysReg(3, 0, 5, 1, 1)
ESR_EL1 = SysReg(3, 0, 5, 2, 0)
FAR_EL1 = SysReg(3, 0, 6, 0, 0)
PAR_EL1 = SysReg(3, 0, 7, 4, 0)
MAIR_EL1 = SysReg(3, 0, 10, 2, 0)
AMAIR_EL1 = SysReg(3, 0, 10, 3, 0)
VBAR_EL1 = SysReg(3, 0, 12, 0, 0)
CONTEXTIDR_EL1 = SysReg(3, 0, 13, 0, 1)
TPIDR_EL1 = SysReg(3, 0, 13, 0, 4)
TPIDR_EL0 = SysReg(3, 3, 13, 0, 2)
TPIDRRO_EL0 = SysReg(3, 3, 13, 0, 3)

# CNTKCTL_EL1 bits (Arm ARM D13.8.14).
CNTKCTL_EL0PCTEN = 1 << 0
CNTKCTL_EL0VCTEN = 1 << 1
CNTKCTL_EVNTEN = 1 << 2
CNTKCTL_EVNTI_SHIFT = 4
CNTKCTL_EVNTI_MASK = 0xF << CNTKCTL_EVNTI_SHIFT
# The CNTKCTL_EL1 bits that let EL0 read each counter register (either of both for CNTFRQ).
EL0_COUNTER_ENABLE: dict[SysReg, int] = {
    CNTVCT_EL0: CNTKCTL_EL0VCTEN,
    CNTPCT_EL0: CNTKCTL_EL0PCTEN,
    CNTFRQ_EL0: CNTKCTL_EL0VCTEN | CNTKCTL_EL0PCTEN,
}

# CNTx_CTL_EL0 bits.
CTL_ENABLE = 1 << 0
CTL_IMASK = 1 << 1
CTL_ISTATUS = 1 << 2

NAMES: dict[SysReg, str] = {
    CNTFRQ_EL0: "CNTFRQ_EL0",
    CNTPCT_EL0: "CNTPCT_EL0",
    CNTVCT_EL0: "CNTVCT_EL0",
    CNTP_TVAL_EL0: "CNTP_TVAL_EL0",
    CNTP_CTL_EL0: "CNTP_CTL_EL0",
    CNTP_CVAL_EL0: "CNTP_CVAL_EL0",
    CNTV_TVAL_EL0: "CNTV_TVAL_EL0",
    CNTV_CTL_EL0: "CNTV_CTL_EL0",
    CNTV_CVAL_EL0: "CNTV_CVAL_EL0",
    CNTKCTL_EL1: "CNTKCTL_EL1",
    MPIDR_EL1: "MPIDR_EL1",
    SCTLR_EL1: "SCTLR_EL1",
    CPACR_EL1: "CPACR_EL1",
    TTBR0_EL1: "TTBR0_EL1",
    TTBR1_EL1: "TTBR1_EL1",
    TCR_EL1: "TCR_EL1",
    AFSR0_EL1: "AFSR0_EL1",
    AFSR1_EL1: "AFSR1_EL1",
    ESR_EL1: "ESR_EL1",
    FAR_EL1: "FAR_EL1",
    PAR_EL1: "PAR_EL1",
    MAIR_EL1: "MAIR_EL1",
    AMAIR_EL1: "AMAIR_EL1",
    VBAR_EL1: "VBAR_EL1",
    CONTEXTIDR_EL1: "CONTEXTIDR_EL1",
    TPIDR_EL1: "TPIDR_EL1",
    TPIDR_EL0: "TPIDR_EL0",
    TPIDRRO_EL0: "TPIDRRO_EL0",
}


def name(reg: SysReg) -> str:
    """A register's architectural name, or its encoding as S<op0>_<op1>_C<n>_C<m>_<op2>."""
    return NAMES.get(reg, f"S{reg.op0}_{reg.op1}_C{reg.crn}_C{reg.crm}_{reg.op2}")
