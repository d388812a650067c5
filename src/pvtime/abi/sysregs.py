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
}


def name(reg: SysReg) -> str:
    """A register's architectural name, or its encoding as S<op0>_<op1>_C<n>_C<m>_<op2>."""
    return NAMES.get(reg, f"S{reg.op0}_{reg.op1}_C{reg.crn}_C{reg.crm}_{reg.op2}")
