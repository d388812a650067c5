"""What a destination checks in a decoded part before it allocates or builds anything.

A part that passed its checksum may still be crafted: every field the VMM uses is checked here for
type and range, and a refusal is a :class:`MigrationError` naming the part, the section and the
field (``part 0, META section, field config.memory_mib: ...``). The bounds are the destination's:
RAM and the PV-time region must lie in the default 40-bit IPA space (KVM_VM_TYPE_ARM_IPA_SIZE 0),
at most KVM's vCPU limit, each region exactly the size the configuration implies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from pvtime.abi.uapi import PAGE_SIZE
from pvtime.abi.widths import U32, U64
from pvtime.cpu import CpuKind
from pvtime.kvm import Quirk
from pvtime.abi.uapi import KVM_MAX_VCPUS  # what KVM_CAP_MAX_VCPUS reports
from pvtime.abi.uapi import KVM_DEV_ARM_VGIC_GRP_CPU_REGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, VGIC_V2_MAX_CPUS
from pvtime.vmm.layout import GRANULE, Layout
from pvtime.vmm.machine import MiB, Machine
from pvtime.vmm.migration_stream import MigrationError

IPA_SPACE = 1 << 40
_LAYOUT_FIELDS = frozenset(f.name for f in dataclasses.fields(Layout))


class Fields:
    """Reads typed fields of one section of one part; a bad one is a MigrationError naming it."""

    def __init__(self, part: object, section: str) -> None:
        self.part = part
        self.section = section

    def error(self, path: str, problem: str) -> MigrationError:
        """The refusal of field `path`."""
        return MigrationError(f"part {self.part}, {self.section} section, field {path}: {problem}")

    def get(self, obj: dict[str, Any], key: str, path: str) -> Any:
        """`obj[key]`, which must be present."""
        if key not in obj:
            raise self.error(path, "missing")
        return obj[key]

    def obj(self, obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
        """A JSON object."""
        value = self.get(obj, key, path)
        if not isinstance(value, dict):
            raise self.error(path, f"{type(value).__name__}, expected an object")
        return value

    def array(self, obj: dict[str, Any], key: str, path: str) -> list[Any]:
        """A JSON array."""
        value = self.get(obj, key, path)
        if not isinstance(value, list):
            raise self.error(path, f"{type(value).__name__}, expected an array")
        return value

    def integer(self, obj: Any, key: Any, path: str, lo: int, hi: int, *, optional: bool = False) -> Any:
        """An integer in lo..hi (None allowed if `optional`)."""
        value = self.get(obj, key, path) if isinstance(obj, dict) else obj[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"{type(value).__name__}, expected an integer")
        if not lo <= value <= hi:
            raise self.error(path, f"{value} is outside {lo}..{hi}")
        return value

    def flag(self, obj: dict[str, Any], key: str, path: str) -> bool:
        """true or false."""
        value = self.get(obj, key, path)
        if not isinstance(value, bool):
            raise self.error(path, f"{type(value).__name__}, expected true or false")
        return value

    def text(self, obj: dict[str, Any], key: str, path: str) -> str:
        """A string."""
        value = self.get(obj, key, path)
        if not isinstance(value, str):
            raise self.error(path, f"{type(value).__name__}, expected a string")
        return value


def check_meta(meta: dict[str, Any]) -> list[tuple[int, int, int]]:
    """Check part 0's META (the later ones must equal it); its regions (slot, gpa, size)."""
    f = Fields(0, "META")
    f.text(meta, "migration", "migration")
    f.integer(meta, "part", "part", 0, U64)
    f.flag(meta, "final", "final")
    config = f.obj(meta, "config", "config")
    f.text(config, "name", "config.name")
    cpu = f.text(config, "cpu", "config.cpu")
    if cpu not in {k.value for k in CpuKind}:
        raise f.error("config.cpu", f"unknown CPU backend {cpu!r}")
    f.integer(config, "vcpus", "config.vcpus", 1, KVM_MAX_VCPUS)
    f.flag(config, "pvtime", "config.pvtime")
    quirks = f.integer(config, "quirks", "config.quirks", 0, U32)
    try:
        Quirk(quirks)
    except ValueError:
        raise f.error("config.quirks", f"{quirks:#x} names unknown quirks") from None
    f.integer(config, "lpt_pv_hz", "config.lpt_pv_hz", 1, U32, optional=True)
    f.integer(config, "instructions_per_sec", "config.instructions_per_sec", 1, U64, optional=True)
    if "vgic" in config and f.flag(config, "vgic", "config.vgic") and config["vcpus"] > VGIC_V2_MAX_CPUS:
        raise f.error("config.vcpus", f"{config['vcpus']} vCPUs with a GICv2, which serves {VGIC_V2_MAX_CPUS}")
    layout = f.obj(config, "layout", "config.layout")
    if set(layout) != _LAYOUT_FIELDS:
        raise f.error("config.layout", f"fields {sorted(layout)}, expected {sorted(_LAYOUT_FIELDS)}")
    for key in sorted(_LAYOUT_FIELDS):
        value = f.integer(layout, key, f"config.layout.{key}", 0, IPA_SPACE - 1)
        if key != "uart_size" and value % PAGE_SIZE:
            raise f.error(f"config.layout.{key}", f"{value:#x} is not page-aligned")
    if layout["pvtime_size"] < GRANULE:
        raise f.error("config.layout.pvtime_size", f"{layout['pvtime_size']:#x} is below one 64 KiB granule")
    ram_size = f.integer(config, "memory_mib", "config.memory_mib", 1, (IPA_SPACE - layout["ram_base"]) // MiB) * MiB
    expect = {Machine.RAM_SLOT: (layout["ram_base"], ram_size),
              Machine.PVTIME_SLOT: (layout["pvtime_base"], Layout(**layout).pvtime_region_size(config["vcpus"]))}
    regions: list[tuple[int, int, int]] = []
    for i, region in enumerate(f.array(meta, "regions", "regions")):
        path = f"regions[{i}]"
        if not isinstance(region, list) or len(region) != 3:
            raise f.error(path, "expected [slot, guest address, size]")
        slot = f.integer(region, 0, f"{path}.slot", 0, U32)
        gpa = f.integer(region, 1, f"{path}.address", 0, U64)
        size = f.integer(region, 2, f"{path}.size", 0, U64)
        if slot not in expect or any(slot == s for s, _, _ in regions):
            raise f.error(f"{path}.slot", f"memory slot {slot} is not one this VMM lays out (or repeated)")
        if (gpa, size) != expect[slot]:
            raise f.error(path, f"slot {slot} at {gpa:#x} of {size} bytes; the config lays it out at "
                                f"{expect[slot][0]:#x} with {expect[slot][1]} bytes")
        regions.append((slot, gpa, size))
    if not any(slot == Machine.RAM_SLOT for slot, _, _ in regions):
        raise f.error("regions", "no RAM region")
    return regions


def check_state(part: object, state: dict[str, Any], nvcpus: int, required_regs: Iterable[int]) -> None:
    """Check a final part's STAT section (each vCPU must list `required_regs`)."""
    f = Fields(part, "STAT")
    f.integer(state, "saved_at_ns", "saved_at_ns", 0, U64)
    f.integer(state, "native_hz", "native_hz", 1, U32)
    f.integer(state, "std_hyp_bmap", "std_hyp_bmap", 0, U64)
    lpt = f.get(state, "lpt", "lpt")
    if lpt is not None:
        lpt = f.obj(state, "lpt", "lpt")
        f.integer(lpt, "ipa", "lpt.ipa", 0, IPA_SPACE - 1)
        f.integer(lpt, "pv_hz", "lpt.pv_hz", 1, U32)
    guest = f.obj(state, "guest", "guest")
    kind = f.text(guest, "kind", "guest.kind")
    if kind == "handover":
        f.text(guest, "token", "guest.token")
    elif kind == "resident":
        f.text(guest, "program", "guest.program")
        f.obj(guest, "options", "guest.options")
    vcpus = f.array(state, "vcpus", "vcpus")
    if len(vcpus) != nvcpus:
        raise f.error("vcpus", f"{len(vcpus)} vCPUs listed, the machine has {nvcpus}")
    for i, v in enumerate(vcpus):
        path = f"vcpus[{i}]"
        if not isinstance(v, dict):
            raise f.error(path, f"{type(v).__name__}, expected an object")
        f.integer(v, "id", f"{path}.id", i, i)
        f.flag(v, "powered_off", f"{path}.powered_off")
        f.integer(v, "steal_ipa", f"{path}.steal_ipa", 0, IPA_SPACE - 1, optional=True)
        regs = f.obj(v, "regs", f"{path}.regs")
        for key in regs:
            try:
                reg = int(key, 16)
            except ValueError:
                raise f.error(f"{path}.regs", f"{key!r} is not a register id") from None
            f.integer(regs, key, f"{path}.regs.{key}", 0, (1 << 128) - 1)
            if not 0 <= reg <= U64:
                raise f.error(f"{path}.regs", f"{key!r} is not a register id")
        listed = {int(key, 16) for key in regs}
        for reg in required_regs:
            if reg not in listed:
                raise f.error(f"{path}.regs", f"register {reg:#x} missing")
    if "vgic" in state:
        for i, row in enumerate(f.array(state, "vgic", "vgic")):
            path = f"vgic[{i}]"
            if not isinstance(row, list) or len(row) != 4:
                raise f.error(path, "expected [group, vCPU, offset, value]")
            f.integer(row, 0, f"{path}[0]", KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_CPU_REGS)
            f.integer(row, 1, f"{path}[1]", 0, nvcpus - 1)
            f.integer(row, 2, f"{path}[2]", 0, 0xFFFF)
            f.integer(row, 3, f"{path}[3]", 0, U32)
    if "uart" in state:
        uart = f.obj(state, "uart", "uart")
        for key in ("raw", "mask"):
            f.integer(uart, key, f"uart.{key}", 0, 0x7FF)
        regs = f.obj(uart, "regs", "uart.regs")
        for key in regs:
            f.integer(regs, key, f"uart.regs.{key}", 0, 0xFFFF)
