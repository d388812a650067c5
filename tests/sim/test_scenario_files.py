"""Scenario files: the embedded ones load, and bad files get errors naming file, line and field."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import pytest

from pvtime.sim import scenario
from pvtime.sim.scenario import ScenarioError
from pvtime.vmm.elf import ElfError, load_elf
from pvtime.vmm.layout import QEMU_VIRT
from tests.cpu.elfwriter import make_elf

GOOD = """\
name = "t"
duration_ms = 100

[[host]]
name = "h"
cpus = 2

[[vm]]
name = "a"
host = "h"
vcpus = 2
guest = { kind = "model", busy_us = [1000, 2000] }

[[vm]]
name = "b"
host = "h"
pin = [1]
[vm.guest]
kind = "model"
busy_us = [1000, 2000]
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        scenario.parse(text, "s.toml")
    return [str(i) for i in info.value.issues]


def test_embedded_scenarios_load() -> None:
    names = scenario.embedded_names()
    assert "default" in names
    for name in names:
        sc = scenario.load(name)
        assert sc.spec.name and sc.source == f"embedded:{name}"
    assert scenario.load().spec.name == "default"


def test_good_file_parses() -> None:
    spec = scenario.parse(GOOD).spec
    assert [v.name for v in spec.vm] == ["a", "b"] and spec.vm[1].pin == [1]


def test_wrong_type_names_file_line_and_field() -> None:
    bad = GOOD.replace('busy_us = [1000, 2000]\n', 'busy_us = [1000, "x"]\n')
    assert errors(bad) == ["s.toml:20: vm[1].guest.busy_us[1]: Input should be a valid integer"]


def test_a_value_of_the_wrong_type_is_refused_not_converted() -> None:
    """A string that reads as a number, a number for a flag: TOML says what type a value is, and a
    value of the wrong type is an error rather than a guess."""
    assert errors(GOOD.replace("duration_ms = ", 'duration_ms = "50" #', 1)) == [
        "s.toml:2: duration_ms: Input should be a valid integer"]
    bad = GOOD.replace('busy_us = [1000, 2000]\n', 'busy_us = [1000, 2000]\nsteal_acc = 1\n')
    assert errors(bad) == ["s.toml:21: vm[1].guest.steal_acc: Input should be a valid boolean"]
    assert errors(GOOD.replace("\ncpus = 2", "\ncpus = 2.5", 1)) == ["s.toml:6: host[0].cpus: Input should be a valid integer"]


def test_a_whole_number_in_e_notation_is_an_integer() -> None:
    """TOML reads 25e6 as a float; a float with no fraction is the integer it names, as `--set` reads it."""
    host = scenario.parse(GOOD.replace("\ncpus = 2", "\ncpus = 2.0\ncounter_hz = 25e6", 1), "s.toml").spec.host[0]
    assert host.counter_hz == 25_000_000 and type(host.counter_hz) is int
    assert host.cpus == 2 and type(host.cpus) is int


def test_inline_table_field_line() -> None:
    bad = GOOD.replace('guest = { kind = "model", busy_us = [1000, 2000] }', 'guest = { kind = "model", hz = 0 }')
    assert errors(bad) == ["s.toml:12: vm[0].guest.hz: Input should be greater than or equal to 1"]


def test_unknown_field_and_missing_field() -> None:
    bad = GOOD.replace("\ncpus = 2\n", "\ncpu = 2\n")
    assert sorted(errors(bad)) == ["s.toml:4: host[0].cpus: Field required",
                                   "s.toml:6: host[0].cpu: Extra inputs are not permitted"]


def test_unknown_guest_kind() -> None:
    bad = GOOD.replace('kind = "model"\nbusy', 'kind = "vmlinux"\nbusy')
    (msg,) = errors(bad)
    assert msg.startswith("s.toml:18: vm[1].guest: Input tag 'vmlinux' found using 'kind' does not match")


def test_cross_checks() -> None:
    bad = GOOD.replace('host = "h"\npin = [1]', 'host = "h"\npin = [7]').replace(
        'name = "a"\nhost = "h"', 'name = "a"\nhost = "nowhere"')
    assert errors(bad) == [
        "s.toml:10: vm[0].host: unknown host 'nowhere' (hosts: h)",
        "s.toml:17: vm[1].pin[0]: host CPU 7 does not exist on h (CPUs 0..1)",
    ]
    assert errors(GOOD.replace("pin = [1]", "pin = [0, 1]")) == ["s.toml:17: vm[1].pin: lists 2 CPUs for 1 vCPUs"]


def test_model_rules() -> None:
    bad = GOOD.replace("busy_us = [1000, 2000]\n", "busy_us = [3000, 2000]\n")
    assert errors(bad) == ["s.toml:18: vm[1].guest: busy_us must be [low, high] with 0 <= low <= high, got [3000, 2000]"]


def test_syntax_error_has_the_line() -> None:
    (msg,) = errors(GOOD.replace("cpus = 2", "cpus = = 2"))
    assert msg.startswith("s.toml:6: TOML syntax:")


def test_syntax_error_at_end_of_document_has_the_last_line() -> None:
    """tomllib reports an unterminated string or array "at end of document": the last line."""
    (msg,) = errors(GOOD + 'extra = """never closed\n\n')
    assert msg == "s.toml:21: TOML syntax: Unterminated string (at end of document)"
    (msg,) = errors(GOOD + "extra = [1,\n2,\n")
    assert msg == "s.toml:22: TOML syntax: Invalid value (at end of document)"


def test_unknown_top_level_table_has_its_line() -> None:
    """An unknown table met only as `[extra.sub]` or `[[extra]]` is reported on that header."""
    assert errors(GOOD + "\n[[extra]]\nq = 1\n") == ["s.toml:22: extra: Extra inputs are not permitted"]
    assert errors(GOOD + "\n[extra.sub]\nq = 1\n") == ["s.toml:22: extra: Extra inputs are not permitted"]
    assert errors("extra.sub = 1\n" + GOOD) == ["s.toml:1: extra: Extra inputs are not permitted"]


ELF_GUEST = '[vm.guest]\nkind = "model"\nbusy_us = [1000, 2000]'


def with_elf(guest: str) -> str:
    """GOOD with vm[1]'s guest (lines 19..) replaced by an ELF guest table."""
    return GOOD.replace(ELF_GUEST, '[vm.guest]\nkind = "elf"\n' + guest)


def test_packaged_elf_guest_is_accepted() -> None:
    sc = scenario.parse(with_elf('image = "minikernel"\nduration_ms = 50\ninstructions_per_sec = 10_000_000'))
    g = sc.spec.vm[1].guest
    assert isinstance(g, scenario.ElfGuestSpec) and g.config_fields() == {"duration_ms": 50}
    (msg,) = errors(with_elf(""))
    assert msg == "s.toml:18: vm[1].guest: give exactly one of image (a packaged image: conformance, minikernel) or path (an ELF file)"
    (msg,) = errors(with_elf('image = "vmlinux"'))
    assert msg.startswith("s.toml:20: vm[1].guest.image: Input should be 'conformance' or 'minikernel'")


def test_elf_path_is_relative_to_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "mk.elf").write_bytes(scenario.packaged_image("minikernel").read_bytes())
    f = tmp_path / "s.toml"
    f.write_text(with_elf('path = "img/mk.elf"\nbusy_ms = 10'))
    sc = scenario.load(str(f))
    g = sc.spec.vm[1].guest
    assert isinstance(g, scenario.ElfGuestSpec)
    assert scenario.elf_image_path(g, sc.source) == tmp_path / "img" / "mk.elf"


def test_bad_elf_paths_name_the_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(with_elf('path = "nope.elf"'))
    with pytest.raises(ScenarioError) as info:
        scenario.load(str(f))
    assert str(info.value) == f"{f}:20: vm[1].guest.path: no such ELF file: nope.elf (looked for {tmp_path / 'nope.elf'})"
    (tmp_path / "text.elf").write_text("not an image")
    f.write_text(with_elf('path = "text.elf"'))
    with pytest.raises(ScenarioError, match=rf"^{f}:20: vm\[1\].guest.path: {tmp_path / 'text.elf'}: not an ELF file"):
        scenario.load(str(f))


def test_an_elf_guest_is_checked_against_its_vm_ram_size_without_allocating_the_ram(tmp_path: Path) -> None:
    big = with_elf('image = "minikernel"').replace("pin = [1]\n", "pin = [1]\nmemory_mib = 65536\n")
    tracemalloc.start()
    try:
        start = time.perf_counter()
        sc = scenario.parse(big, "s.toml")
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sc.spec.vm[1].memory_mib == 65536
    assert peak < 16 << 20 and elapsed < 5  # not a 64 GiB scratch RAM
    # An image larger than its VM's RAM is refused with load_elf's words, at the field's line.
    image = make_elf(struct.pack("<I", 0x14000000), bss=1 << 20)  # b .
    (tmp_path / "big.elf").write_bytes(image)
    f = tmp_path / "s.toml"
    f.write_text(with_elf('path = "big.elf"').replace("pin = [1]\n", "pin = [1]\nmemory_mib = 1\n"))
    with pytest.raises(ScenarioError) as info:
        scenario.load(str(f))
    with pytest.raises(ElfError) as loading:
        load_elf(image, bytearray(1 << 20), QEMU_VIRT.ram_base)
    img = tmp_path / "big.elf"
    assert str(info.value) == f"{f}:21: vm[1].guest.path: " + str(loading.value).replace("<image>", str(img))
    assert str(info.value) == (f"{f}:21: vm[1].guest.path: {img}: segment 0 at [0x40080000, 0x40180004) is outside "
                               "guest RAM [0x40000000, 0x40100000); give the guest more memory or relink it")


def test_config_fields_need_an_image_that_has_the_block() -> None:
    (msg,) = errors(with_elf('image = "conformance"\nidle_ms = 5'))
    assert msg.startswith("s.toml:21: vm[1].guest.idle_ms: ")
    assert msg.endswith("conformance.elf has no minikernel_config symbol: idle_ms cannot be set")
    (msg,) = errors(with_elf('image = "minikernel"\nbusy_ms = 0'))
    assert msg.startswith("s.toml:21: vm[1].guest.busy_ms: Input should be greater than 0")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file, and not an embedded scenario"):
        scenario.load(str(tmp_path / "nope.toml"))
    f = tmp_path / "x.toml"
    f.write_text(GOOD.replace("duration_ms = 100", "duration_ms = -1"))
    with pytest.raises(ScenarioError, match=r"x.toml:2: duration_ms: Input should be greater than 0"):
        scenario.load(str(f))


SCHED = """\
name = "t"
duration_ms = 100

[[host]]
name = "h"
cpus = 2
[host.sched]
policy = "{policy}"
hz = {hz}
preempt = "{preempt}"
{extra}
"""


def test_a_hosts_scheduler_is_configured_in_its_table() -> None:
    spec = scenario.parse(SCHED.format(policy="cfs", hz=1000, preempt="full", extra="latency_us = 4000"),
                          "s.toml").spec
    config = spec.host[0].sched.config()
    assert (config.policy, config.hz, config.preempt) == ("cfs", 1000, "full")
    assert config.cfs.latency_ns == 4_000_000 and config.cfs.min_granularity_ns == 750_000
    default = scenario.parse(SCHED.format(policy="eevdf", hz=250, preempt="voluntary", extra=""), "s.toml")
    assert default.spec.host[0].sched.config().eevdf.base_slice_ns == 700_000


def test_a_tunable_of_the_other_policy_names_file_line_and_field() -> None:
    assert errors(SCHED.format(policy="eevdf", hz=250, preempt="none", extra="wakeup_granularity_us = 500")) == [
        's.toml:11: host[0].sched.wakeup_granularity_us: a tunable of policy = "cfs", but this host runs policy = "eevdf"']
    assert errors(SCHED.format(policy="cfs", hz=250, preempt="none", extra="base_slice_us = 500")) == [
        's.toml:11: host[0].sched.base_slice_us: a tunable of policy = "eevdf", but this host runs policy = "cfs"']
    assert errors(SCHED.format(policy="cfs", hz=250, preempt="lazy", extra="")) == [
        "s.toml:10: host[0].sched.preempt: lazy preemption came with Linux 6.13; CFS is Linux <= 6.5"]
    (bad_hz,) = errors(SCHED.format(policy="eevdf", hz=200, preempt="none", extra=""))
    assert bad_hz.startswith("s.toml:9: host[0].sched.hz: ")
