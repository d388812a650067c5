"""The native hooks of the unicorn backend (`pvtime.cpu.unicorn.native`).

- the shared objects shipped in src/pvtime/native are exactly what native/ builds to, wherever
  the checkout is;
- the block hook counts and stops as its docstring says, on both host architectures (each shared
  object is run in unicorn, so CI on one architecture checks the other's too; the system-register
  filter's are in test_sysreg_filter.py);
- PVTIME_NATIVE=0 selects the Python twins, and they give identical results: the unicorn tests
  pass with them, and a minikernel run is byte for byte the same.

After editing anything under native/, run `python native/build.py` and commit the shared objects
with the sources.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from unicorn import UC_HOOK_CODE, UC_PROT_ALL, Uc

from pvtime.cpu.unicorn import UnicornCpu
from pvtime.cpu.unicorn.native import NATIVE_ENV, native_hook
from tests.cpu.shipped import ABIS, SHIPPED, set_up_call, shipped

REPO = Path(__file__).resolve().parents[2]


def _load_build(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"native_build_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build(REPO / "native" / "build.py")
needs_zig = pytest.mark.skipif(importlib.util.find_spec("ziglang") is None,
                               reason="building native hooks needs the 'ziglang' package (extra: guests)")


@needs_zig
@pytest.mark.parametrize(("name", "arch"), build.targets())
def test_shipped_shared_object_matches_its_source(name: str, arch: str, tmp_path: Path) -> None:
    ours = SHIPPED / f"{name}.{arch}.so"
    assert ours.is_file(), f"{ours} is missing: run `python native/build.py`"
    built = build.build(name, arch, tmp_path)
    assert built.read_bytes() == ours.read_bytes(), (
        f"{ours.relative_to(REPO)} does not match native/ sources: run `python native/build.py`"
    )


def test_every_shipped_shared_object_is_a_target() -> None:
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(f"{n}.{a}.so" for n, a in build.targets())


@needs_zig
def test_build_does_not_depend_on_the_checkout_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "some" / "other checkout" / "native"
    shutil.copytree(REPO / "native", elsewhere, ignore=shutil.ignore_patterns("__pycache__"))
    name, arch = build.targets()[0]
    out = _load_build(elsewhere / "build.py").build(name, arch, tmp_path / "out")
    assert out.read_bytes() == (SHIPPED / out.name).read_bytes()


# Running a shipped hook in unicorn: the shared object at BASE, struct block_counter at STATE; the
# hook is called with `UC` as the engine, returns to RET; its emu_stop pointer is STOP (a `ret`).
BASE, STATE, STACK, STOP, RET = 0x10_0000, 0x40_0000, 0x50_0000, 0x60_0000, 0x60_0100
UC = 0x1234_5678_9ABC
def _emulated_hook(arch: str) -> Callable[[int, int, int], tuple[int, int, int | None]]:
    """A function (used, limit, size) -> (used, stopped, the engine emu_stop got or None) that runs
    the shipped block hook for `arch` once, in unicorn."""
    entry, segments = shipped("block_counter", arch, "pvtime_block_counter")
    abi = ABIS[arch]

    def call(used: int, limit: int, size: int) -> tuple[int, int, int | None]:
        uc = Uc(abi.engine, abi.mode)
        for base in (BASE, STATE, STACK - 0x1_0000, STOP):
            uc.mem_map(base, 0x10_0000 if base == BASE else 0x1_0000, UC_PROT_ALL)
        for vaddr, data in segments:
            uc.mem_write(BASE + vaddr, data)
        uc.mem_write(STOP, abi.ret)
        uc.mem_write(STATE, b"".join(v.to_bytes(8, "little") for v in (used, limit, STOP, 0)))
        set_up_call(uc, abi, (UC, 0x4000_0000, size, STATE), STACK, RET)
        stopped_with: list[int] = []
        uc.hook_add(UC_HOOK_CODE, lambda uc, *_: stopped_with.append(uc.reg_read(abi.args[0])), begin=STOP,
                    end=STOP)
        uc.emu_start(BASE + entry, RET)
        state = uc.mem_read(STATE, 32)
        return (int.from_bytes(state[0:8], "little"), int.from_bytes(state[24:32], "little"),
                stopped_with[0] if stopped_with else None)

    return call


@pytest.mark.parametrize("arch", sorted(ABIS))
def test_block_hook_counts_each_block_and_stops_the_engine_at_the_limit(arch: str) -> None:
    call = _emulated_hook(arch)  # (used, limit, block size) -> (used, stopped, emu_stop's engine)
    assert call(0, 100, 40) == (40, 0, None)
    assert call(96, 100, 40) == (136, 0, None)  # a block that starts below the limit counts whole
    assert call(100, 100, 40) == (100, 1, UC)  # one that would start at the limit is not counted
    assert call(1 << 63, 1, 4) == (1 << 63, 1, UC)  # the comparison is unsigned
    assert call(0, 1 << 63, 0xFFFF_FFFF) == (0xFFFF_FFFF, 0, None)  # the size is a u32


def test_the_python_hook_runs_with_PVTIME_NATIVE_0_or_where_no_shared_object_fits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NATIVE_ENV, raising=False)
    assert UnicornCpu(0).native == (native_hook() is not None)
    assert not UnicornCpu(0, native=False).native
    monkeypatch.setenv(NATIVE_ENV, "0")
    assert not UnicornCpu(0).native
    monkeypatch.delenv(NATIVE_ENV)
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert not UnicornCpu(0).native
    with pytest.raises(RuntimeError, match="not available"):
        UnicornCpu(0, native=True)


def _run(args: list[str], native: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, NATIVE_ENV: native}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_unicorn_tests_pass_with_the_python_hook() -> None:
    files = ["tests/cpu/test_unicorn.py", *(str(p.relative_to(REPO)) for p in sorted(
        (REPO / "tests" / "cpu").glob("test_unicorn_*.py"))), "tests/cpu/test_sysreg_filter.py"]
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *files], native="0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_python_hook_gives_the_same_minikernel_run_as_the_native_one(tmp_path: Path) -> None:
    if native_hook() is None:
        pytest.skip("no native block counter for this host: both runs would use the Python hook")
    from pvtime.vmm.images import packaged_image, patch_minikernel

    elf = tmp_path / "minikernel.elf"
    elf.write_bytes(patch_minikernel(packaged_image("minikernel").read_bytes(), duration_ms=200, busy_ms=30,
                                     idle_ms=20))
    # 3 vCPUs over 1 host CPU: timer IRQs, hypercalls, steal, EL0 counter traps, the UART.
    command = ["-c", "from pvtime.cli import main; main()", "guest", "run", str(elf), "--vcpus", "3",
               "--host-cpus", "1", "--mips", "100", "--stats"]
    native, python = _run(command, native="1"), _run(command, native="0")
    assert native.returncode == 0, native.stderr
    assert "minikernel: done" in native.stdout and "instructions" in native.stderr
    assert (python.returncode, python.stdout, python.stderr) == (native.returncode, native.stdout, native.stderr)
