"""SMCCC function identifiers and return codes (Arm DEN0028, DEN0057A; docs/semantics.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pvtime.abi.widths import U64


class Owner(IntEnum):
    """The service owner field, bits [29:24] of a function id."""

    ARCH = 0
    CPU = 1
    SIP = 2
    OEM = 3
    STANDARD = 4
    STANDARD_HYP = 5
    VENDOR_HYP = 6
    TRUSTED_APP = 48
    TRUSTED_APP_END = 49
    TRUSTED_OS = 50
    TRUSTED_OS_END = 63


# Return codes, as signed values; x0 carries them as u64 (`to_u64`; back with `widths.s64`).
SUCCESS = 0
NOT_SUPPORTED = -1
NOT_REQUIRED = -2
INVALID_PARAMETER = -3

SMCCC_VERSION_1_1 = 0x10001


@dataclass(frozen=True)
class FunctionId:
    """A decoded SMCCC function id."""

    fast: bool
    smc64: bool
    owner: int
    number: int

    def encode(self) -> int:
        """The 32-bit function id."""
        return encode(self.fast, self.smc64, self.owner, self.number)


def encode(fast: bool, smc64: bool, owner: int, number: int) -> int:
    """Build a function id: (fast<<31) | (smc64<<30) | ((owner & 0x3f)<<24) | (number & 0xffff)."""
    return (int(fast) << 31) | (int(smc64) << 30) | ((owner & 0x3F) << 24) | (number & 0xFFFF)


def decode(fid: int) -> FunctionId:
    """Split the low 32 bits of x0 into the fields of a function id."""
    fid &= 0xFFFF_FFFF
    return FunctionId(
        fast=bool(fid >> 31 & 1),
        smc64=bool(fid >> 30 & 1),
        owner=fid >> 24 & 0x3F,
        number=fid & 0xFFFF,
    )


def to_u64(value: int) -> int:
    """A return code (possibly negative) as the guest sees it in x0."""
    return value & U64




SMCCC_VERSION = encode(True, False, Owner.ARCH, 0)  # 0x80000000
SMCCC_ARCH_FEATURES = encode(True, False, Owner.ARCH, 1)  # 0x80000001
PV_TIME_FEATURES = encode(True, True, Owner.STANDARD_HYP, 0x20)  # 0xC5000020
PV_TIME_ST = encode(True, True, Owner.STANDARD_HYP, 0x21)  # 0xC5000021
PV_TIME_LPT = encode(True, True, Owner.STANDARD_HYP, 0x22)  # 0xC5000022 (2020 RFC)

# PSCI 1.1 (DEN0022), used by the machine layout of real guests.
PSCI_VERSION = 0x84000000
PSCI_CPU_SUSPEND = 0xC4000001
PSCI_CPU_OFF = 0x84000002
PSCI_CPU_ON = 0xC4000003
PSCI_AFFINITY_INFO = 0xC4000004
PSCI_MIGRATE_INFO_TYPE = 0x84000006
PSCI_SYSTEM_OFF = 0x84000008
PSCI_SYSTEM_RESET = 0x84000009
PSCI_FEATURES = 0x8400000A
PSCI_SYSTEM_RESET2 = 0xC4000012
PSCI_TOS_MP = 2  # MIGRATE_INFO_TYPE: no Trusted OS that needs migrating
PSCI_VERSION_1_1 = 0x10001
PSCI_SUCCESS = 0
PSCI_NOT_SUPPORTED = -1
PSCI_INVALID_PARAMETERS = -2
PSCI_DENIED = -3
PSCI_ALREADY_ON = -4
PSCI_ON_PENDING = -5
PSCI_INTERNAL_FAILURE = -6
PSCI_NOT_PRESENT = -7
PSCI_DISABLED = -8
PSCI_INVALID_ADDRESS = -9
AFFINITY_ON = 0
AFFINITY_OFF = 1
AFFINITY_ON_PENDING = 2
