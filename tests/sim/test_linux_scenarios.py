"""Linux guests in scenario files (`guest = { kind = "linux", ... }`): what is checked when the
file is read, before anything boots (file, line and field in each error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvtime.sim import scenario


def toml(vcpus: int = 2, memory_mib: int = 128, guest: str = 'kind = "linux", busy_ms = 100') -> str:
    return f"""name = "l"
duration_ms = 500

[[host]]
name = "h"
cpus = 1

[[vm]]
name = "lin"
host = "h"
vcpus = {vcpus}
memory_mib = {memory_mib}
guest = {{ {guest} }}
"""


def errors(text: str, source: str = "s.toml") -> list[str]:
    with pytest.raises(scenario.ScenarioError) as info:
        scenario.parse(text, source)
    return [str(i) for i in info.value.issues]


def test_the_packaged_kernel_by_default_and_the_command_line_it_gets() -> None:
    s = scenario.parse(toml(guest='kind = "linux", busy_ms = 250, append = "quiet"'))
    guest = s.spec.vm[0].guest
    assert isinstance(guest, scenario.LinuxGuestSpec)
    boot = scenario.linux_boot(guest, s.source)
    assert boot.bootargs == "console=ttyAMA0 pvtime.busy_ms=250 quiet"
    assert boot.kernel[:2] == b"\x1f\x8b" and boot.initrd  # the packaged Image.gz and initramfs


def test_more_vcpus_than_a_gicv2_serves_is_an_error_on_the_vm() -> None:
    assert errors(toml(vcpus=9)) == ["s.toml:11: vm[0].vcpus: a Linux guest runs on a GICv2, which serves "
                                     "at most 8 vCPUs"]


def test_ram_too_small_for_kernel_and_initramfs_names_memory_mib() -> None:
    (err,) = errors(toml(memory_mib=2))
    assert err.startswith("s.toml:12: vm[0].memory_mib: 2 MiB of RAM cannot hold the kernel")


def test_a_kernel_file_that_is_missing_or_not_an_image_names_the_kernel_field(tmp_path: Path) -> None:
    source = tmp_path / "s.toml"
    (err,) = errors(toml(guest='kind = "linux", kernel = "nope/Image"'), str(source))
    assert "kernel" in err and "nope/Image" in err
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF" + bytes(200))
    (err,) = errors(toml(guest='kind = "linux", kernel = "vmlinux"'), str(source))
    assert "kernel" in err and "not an arm64 Image" in err
