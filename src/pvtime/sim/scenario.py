"""Scenario files: TOML describing hosts, VMs, noise, duration and seed, validated against the
schema (`pvtime.sim.scenario_schema`), then checked across specs (names, CPUs, images).

Every error names the file, the line and the field, e.g.
`busy.toml:14: vm[1].guest.busy_us: Input should be a valid integer`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_origin

from pydantic import ValidationError

from pvtime.sim.overrides import Override, OverrideError, apply, blame
from pvtime.sim.scenario_schema import (
    SCENARIO_FORMAT, ElfGuestSpec, GuestSpec, HostSpec, LinuxGuestSpec, MigrationSpec, ModelGuestSpec, NoiseSpec,
    SchedSpec,
    ScenarioSpec, VmmThreadSpec, VmSpec,
)
from pvtime.sim.toml_lines import dotted, key_lines, last_line, line_of
from pvtime.vmm.elf import ElfError, elf_layout
from pvtime.abi.uapi import VGIC_V2_MAX_CPUS
from pvtime.vmm.arm64_image import Arm64Image, ImageError, plan
from pvtime.vmm.images import has_minikernel_config, linux_image, packaged_image, patch_minikernel
from pvtime.vmm.linux_boot import LinuxBoot
from pvtime.vmm.layout import QEMU_VIRT

DTB_ROOM = 64 * 1024  # what a device tree is given when checking a Linux VM's RAM (it needs ~2 KiB)

__all__ = [
    "SCENARIO_FORMAT", "ElfGuestSpec", "GuestSpec", "HostSpec", "Issue", "LinuxGuestSpec", "MigrationRoute",
    "MigrationSpec", "ModelGuestSpec", "NoiseSpec", "Override", "SchedSpec", "Scenario", "ScenarioError",
    "ScenarioSpec", "VmSpec",
    "VmmThreadSpec", "elf_image", "elf_image_path", "embedded_names", "embedded_text", "late_migrations", "load",
    "linux_boot", "migration_routes", "packaged_image", "parse",
]


@dataclass(frozen=True)
class Issue:
    """One problem in a scenario file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ScenarioError(ValueError):
    """A scenario file that cannot be run; `issues` lists each problem with file, line and field."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


@dataclass(frozen=True)
class Scenario:
    """A validated scenario and where it came from."""

    spec: ScenarioSpec
    source: str  # file path, or "embedded:<name>"
    text: str = ""  # the TOML text it was read from
    overrides: tuple[Override, ...] = ()  # set over the text (`pvtime.sim.overrides`), in order


def embedded_names() -> list[str]:
    """The scenarios shipped in the package."""
    root = resources.files("pvtime.scenarios")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def embedded_text(name: str) -> str:
    """The TOML text of an embedded scenario."""
    return resources.files("pvtime.scenarios").joinpath(f"{name}.toml").read_text(encoding="utf-8")


def load(name_or_path: str | None = None, overrides: Sequence[Override] = ()) -> Scenario:
    """Load a scenario file, or an embedded scenario by name (default: `default`), with `overrides`
    set over it (`parse`)."""
    if name_or_path is None:
        name_or_path = "default"
    path = Path(name_or_path)
    if path.is_file():
        return parse(path.read_text(encoding="utf-8"), str(path), overrides)
    if name_or_path in embedded_names():
        return parse(embedded_text(name_or_path), f"embedded:{name_or_path}", overrides)
    raise ScenarioError([Issue(name_or_path, None, "", "no such file, and not an embedded scenario "
                               f"(embedded: {', '.join(embedded_names())})")])


# The top-level arrays of tables ([[host]], [[vm]], ...): an override names one of their elements.
_ARRAYS = frozenset(k for k, f in ScenarioSpec.model_fields.items() if get_origin(f.annotation) is list)


def _whole_numbers(value: Any) -> Any:
    """TOML reads 25e6 as a float: a float with no fraction becomes the integer it names (as `--set`
    reads it), so that an integer field takes it; the schema is strict about every other type."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def parse(text: str, source: str = "<scenario>", overrides: Sequence[Override] = ()) -> Scenario:
    """Parse and validate TOML text, with `overrides` set over it before validation; raises
    ScenarioError naming file, line and field -- or the option, for an error in an overridden
    field (an error elsewhere says which overrides were set).

    A run's end moved by an override (`--duration`) may come before a [[migration]]: that
    migration does not happen (the caller says so), where a file's own duration is refused."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([_syntax_issue(source, str(exc), text)]) from None
    lines = key_lines(text)
    newer = _newer_format(source, lines, data)
    if newer is not None:  # its other errors would be of a format this pvtime does not know
        raise ScenarioError([newer])
    try:
        data, placed = apply(data, overrides, arrays=_ARRAYS)
    except OverrideError as exc:
        raise ScenarioError([Issue(exc.origin, None, exc.field, exc.message)]) from None
    where = _Where(source, lines, _root_line(text), placed)
    try:
        spec = ScenarioSpec.model_validate(_whole_numbers(data))
    except ValidationError as exc:
        raise ScenarioError([where.issue(err["loc"], err["msg"]) for err in exc.errors()]) from None
    cut_short = any(loc == ("duration_ms",) for loc, _ in placed)
    issues = [where.issue(loc, msg) for loc, msg in _cross_checks(spec, source, late_ok=cut_short)]
    if issues:
        raise ScenarioError(issues)
    return Scenario(spec, source, text, tuple(overrides))


def _newer_format(source: str, lines: dict[Any, int], data: dict[str, Any]) -> Issue | None:
    fmt = data.get("format")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > SCENARIO_FORMAT:
        return Issue(source, line_of(lines, ("format",)), "format",
                     f"written for scenario format {fmt}, newer than this pvtime reads (format {SCENARIO_FORMAT} "
                     "and older): upgrade pvtime")
    return None


def _syntax_issue(source: str, message: str, text: str) -> Issue:
    m = re.search(r"\(at line (\d+), column \d+\)", message)
    line = int(m.group(1)) if m else last_line(text) if "(at end of document)" in message else None
    return Issue(source, line, "", f"TOML syntax: {message}")


@dataclass(frozen=True)
class _Where:
    """Where a field's value came from: the file's line, or an override."""

    source: str
    lines: dict[Any, int]
    root: int  # the top-level table's line
    placed: list[tuple[tuple[Any, ...], Override]]

    def issue(self, loc: tuple[Any, ...], msg: str) -> Issue:
        loc = _without_tags(tuple(loc))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        culprit = blame(loc, self.placed)
        if culprit is not None:
            return Issue(culprit.origin, None, dotted(loc), msg)
        if self.placed:
            msg += f" (with {', '.join(o.origin for _, o in self.placed)})"
        line = line_of(self.lines, loc)
        # A top-level key the file lacks (`name`, `host`, ...) has no line of its own: it belongs
        # to the top-level table, which the error points at.
        return Issue(self.source, self.root if line is None else line, dotted(loc), msg)


def _root_line(text: str) -> int:
    """Where the top-level table starts: its first line with content (1 for an empty file)."""
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            return no
    return 1


def _without_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the discriminator tag pydantic inserts in a tagged union's path (guest.model.x)."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "guest" and part in ("model", "elf", "linux"):
            continue
        out.append(part)
    return tuple(out)


def elf_image_path(guest: ElfGuestSpec, source: str) -> Path:
    """Where an ELF guest's image is: the packaged file, or `path` relative to the scenario file
    (to the working directory for an embedded scenario, which has no folder)."""
    if guest.image is not None:
        return packaged_image(guest.image)
    assert guest.path is not None
    return scenario_path(guest.path, source)


def scenario_path(path: str, source: str) -> Path:
    """A file a scenario names: relative to the scenario file (to the working directory for an
    embedded scenario, which has no folder)."""
    p = Path(path).expanduser()
    if p.is_absolute() or source.startswith("embedded:") or source.startswith("<"):
        return p
    return Path(source).parent / p


def linux_boot(guest: LinuxGuestSpec, source: str) -> LinuxBoot:
    """The kernel, initramfs and command line a Linux VM boots (ImageError naming a file that
    cannot be read)."""
    kernel = scenario_path(guest.kernel, source) if guest.kernel is not None else linux_image("Image.gz")
    initrd = scenario_path(guest.initrd, source) if guest.initrd is not None else linux_image("initramfs.cpio.gz")
    return LinuxBoot.from_files(kernel, initrd, guest.bootargs())


def elf_image(guest: ElfGuestSpec, source: str) -> bytes:
    """The image bytes a VM loads: the file, with the scenario's `minikernel_config` fields set.

    Raises ElfError naming the file (unreadable, malformed, or no config block to set)."""
    path = elf_image_path(guest, source)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ElfError(f"{path}: cannot read the image: {err.strerror or err}") from None
    fields = guest.config_fields()
    return patch_minikernel(data, name=str(path), **fields) if fields else data


def _cross_checks(spec: ScenarioSpec, source: str, *, late_ok: bool = False) -> list[tuple[tuple[Any, ...], str]]:
    """What one field cannot check alone: names, CPU numbers, images (and migrations after the
    end, unless `late_ok`)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    hosts = {}
    for i, h in enumerate(spec.host):
        if h.name in hosts:
            out.append((("host", i, "name"), f"duplicate host name {h.name!r}"))
        hosts[h.name] = h
        out += [(("host", i, "sched", *loc), msg) for loc, msg in _sched_checks(h.sched)]
    names: set[str] = set()
    groups: tuple[tuple[str, Sequence[VmSpec | NoiseSpec]], ...] = (("vm", spec.vm), ("noise", spec.noise))
    for kind, items in groups:
        for i, item in enumerate(items):
            if item.name in names:
                out.append(((kind, i, "name"), f"duplicate name {item.name!r}"))
            names.add(item.name)
            host = hosts.get(item.host)
            if host is None:
                out.append(((kind, i, "host"), f"unknown host {item.host!r} "
                            f"(hosts: {', '.join(sorted(hosts))})"))
                continue
            for key in ("cpus", "pin"):
                cpus = getattr(item, key, None)
                if cpus is None:
                    continue
                if not cpus:
                    out.append(((kind, i, key), "must list at least one host CPU"))
                for j, c in enumerate(cpus):
                    if not 0 <= c < host.cpus:
                        out.append(((kind, i, key, j), f"host CPU {c} does not exist on {host.name} "
                                    f"(CPUs 0..{host.cpus - 1})"))
    vm_names = {v.name: v for v in spec.vm}
    for i in [] if late_ok else late_migrations(spec):
        out.append((("migration", i, "at_ms"), f"{spec.migration[i].at_ms} ms is not before the end of the run "
                    f"(duration_ms = {spec.duration_ms}): the migration would never happen"))
    for i, mig in enumerate(spec.migration):
        if mig.vm not in vm_names:
            out.append((("migration", i, "vm"), f"unknown vm {mig.vm!r}"))
        if mig.to not in hosts:
            out.append((("migration", i, "to"), f"unknown host {mig.to!r} (hosts: {', '.join(sorted(hosts))})"))
        elif mig.vm in vm_names:
            v = vm_names[mig.vm]
            for key in ("cpus", "pin"):
                bad = [c for c in (getattr(v, key) or []) if c >= hosts[mig.to].cpus]
                if bad:
                    out.append((("migration", i, "to"), f"vm {v.name}'s {key} {bad} do not exist on {mig.to}"))
    out += [(("migration", r.index, "to"), _refusal(r)) for r in migration_routes(spec)
            if r.frequency_change_without_lpt and not spec.migration[r.index].allow_frequency_change]
    for i, vm in enumerate(spec.vm):
        if vm.pin is not None and vm.cpus is not None:
            out.append((("vm", i, "pin"), "give pin or cpus, not both"))
        if vm.pin is not None and len(vm.pin) != vm.vcpus:
            out.append((("vm", i, "pin"), f"lists {len(vm.pin)} CPUs for {vm.vcpus} vCPUs"))
        g = vm.guest
        if isinstance(g, ElfGuestSpec):
            out += [(("vm", i, "guest", *loc), msg) for loc, msg in _elf_checks(g, vm, source)]
        if isinstance(g, LinuxGuestSpec):
            out += [(("vm", i, *loc), msg) for loc, msg in _linux_checks(g, vm, source)]
    return out


def late_migrations(spec: ScenarioSpec) -> list[int]:
    """The indexes of the [[migration]]s whose time is not before the end of the run."""
    return [i for i, m in enumerate(spec.migration) if m.at_ms >= spec.duration_ms]


@dataclass(frozen=True)
class MigrationRoute:
    """Where [[migration]] `index` takes its VM: from the host it is on by then (each earlier
    migration of the VM done), and the two hosts' counter frequencies."""

    index: int
    vm: str
    from_host: str
    to_host: str
    from_hz: int
    to_hz: int
    lpt: bool  # the VM has Live Physical Time

    @property
    def frequency_change_without_lpt(self) -> bool:
        """The guest's counter changes rate under it: nothing rescales a counter without LPT."""
        return not self.lpt and self.from_hz != self.to_hz


def migration_routes(spec: ScenarioSpec) -> list[MigrationRoute]:
    """The route of each [[migration]], in file order (those naming an unknown VM or host left out)."""
    hz = {h.name: h.counter_hz for h in spec.host}
    vms = {v.name: v for v in spec.vm}
    where = {v.name: v.host for v in spec.vm}
    routes: dict[int, MigrationRoute] = {}
    for i in sorted(range(len(spec.migration)), key=lambda k: spec.migration[k].at_ms):
        m = spec.migration[i]
        src = where.get(m.vm)
        if src not in hz or m.to not in hz:
            continue
        assert src is not None
        routes[i] = MigrationRoute(i, m.vm, src, m.to, hz[src], hz[m.to], vms[m.vm].lpt_pv_hz is not None)
        where[m.vm] = m.to
    return [routes[i] for i in sorted(routes)]


def _refusal(route: MigrationRoute) -> str:
    # The LPT RFC's cover letter (KVM: arm64: Add pvtime LPT support, 2020) names it: a guest that
    # does not use LPT sees its counter jump, and run at the new rate, on a host of another native
    # frequency, so such a guest is not migrated across frequencies; cloud-hypervisor likewise
    # refuses to restore a VM on a host whose CNTFRQ differs.
    ratio = route.to_hz / route.from_hz
    return (f"vm {route.vm} has no Live Physical Time (lpt_pv_hz) and {route.from_host} counts at "
            f"{route.from_hz:,} Hz, {route.to_host} at {route.to_hz:,} Hz: after this live migration its clock "
            f"would run {ratio:.4g}x as fast as real time. Give the VM lpt_pv_hz, migrate it to a host of "
            f"{route.from_hz:,} Hz, or set allow_frequency_change = true on this migration to run it anyway "
            "(flagged in the results)")


# Each policy's own tunables: setting one on a host of the other policy is an error.
_POLICY_TUNABLES = {"eevdf": ("base_slice_us",), "cfs": ("latency_us", "min_granularity_us", "wakeup_granularity_us")}


def _sched_checks(sched: SchedSpec) -> list[tuple[tuple[Any, ...], str]]:
    """Tunables belong to one policy; lazy preemption (Linux >= 6.13) never met CFS (<= 6.5)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for policy, names in _POLICY_TUNABLES.items():
        if policy == sched.policy:
            continue
        for name in names:
            if name in sched.model_fields_set:
                out.append(((name,), f"a tunable of policy = \"{policy}\", but this host runs policy = \"{sched.policy}\""))
    if sched.policy == "cfs" and sched.preempt == "lazy":
        out.append((("preempt",), "lazy preemption came with Linux 6.13; CFS is Linux <= 6.5"))
    return out


def _linux_checks(g: LinuxGuestSpec, vm: VmSpec, source: str) -> list[tuple[tuple[Any, ...], str]]:
    """A GICv2 serves 8 vCPUs; the kernel and initramfs can be read, the kernel is an arm64
    Image, and both fit the VM's RAM with a device tree."""
    if vm.vcpus > VGIC_V2_MAX_CPUS:
        return [(("vcpus",), f"a Linux guest runs on a GICv2, which serves at most {VGIC_V2_MAX_CPUS} vCPUs")]
    kernel = ("guest", "kernel") if g.kernel is not None else ("guest", "kind")
    try:
        boot = linux_boot(g, source)
    except ImageError as err:
        return [(("guest", "initrd") if str(err).startswith("initramfs") else kernel, str(err))]
    try:
        image = Arm64Image.parse(boot.kernel)
    except ImageError as err:
        return [(kernel, str(err))]
    try:
        plan(image, QEMU_VIRT.ram_base, vm.memory_mib << 20, initrd_size=len(boot.initrd or b""),
             dtb_size=DTB_ROOM)
    except ImageError as err:
        return [(("memory_mib",), str(err))]
    return []


def _elf_checks(g: ElfGuestSpec, vm: VmSpec, source: str) -> list[tuple[tuple[Any, ...], str]]:
    """The image exists, fits the VM's RAM, and has a config block if fields set one."""
    where = ("path",) if g.path is not None else ("image",)
    path = elf_image_path(g, source)
    if not path.is_file():
        return [(where, f"no such ELF file: {g.path} (looked for {path})")]
    fields = g.config_fields()
    try:
        data = path.read_bytes()
        if fields and not has_minikernel_config(data, str(path)):
            first = next(iter(fields))
            return [((first,), f"{path} has no minikernel_config symbol: {', '.join(fields)} cannot be set")]
        # Lay it out in RAM of the VM's size (from its headers; no RAM allocated): a bad or too large
        # image is refused here, with the scenario line, rather than when the run builds the VM.
        elf_layout(data, QEMU_VIRT.ram_base, vm.memory_mib << 20)
    except OSError as err:
        return [(where, f"cannot read {path}: {err.strerror or err}")]
    except ElfError as err:
        return [(where, str(err).replace("<image>", str(path), 1))]
    return []
