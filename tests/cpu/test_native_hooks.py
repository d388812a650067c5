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

import ctypes
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
from unicorn import arm64_const as A

from pvtime.cpu.unicorn import UnicornCpu
from pvtime.cpu.unicorn.native import NATIVE_ENV, _CounterState, native_hook
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
# hook is called with `UC` as the engine, returns to RET; its emu_stop pointer is STOP and its
# uc_reg_read pointer READ (stubs that return, READ after storing `pstate`).
BASE, STATE, STACK, STOP, READ, RET = 0x10_0000, 0x40_0000, 0x50_0000, 0x60_0000, 0x60_0080, 0x60_0100
UC = 0x1234_5678_9ABC
PSTATE_ID, PSTATE_I = A.UC_ARM64_REG_PSTATE, 1 << 7
Hook = Callable[..., tuple[_CounterState, int | None]]


def _emulated_hook(arch: str) -> Hook:
    """A function (size, pstate=0, **state fields) -> (the state after, the engine emu_stop got
    or None) that runs the shipped block hook for `arch` once, in unicorn."""
    entry, segments = shipped("block_counter", arch, "pvtime_block_counter")
    abi = ABIS[arch]

    def call(size: int, pstate: int = 0, **fields: int) -> tuple[_CounterState, int | None]:
        uc = Uc(abi.engine, abi.mode)
        for base in (BASE, STATE, STACK - 0x1_0000, STOP):
            uc.mem_map(base, 0x10_0000 if base == BASE else 0x1_0000, UC_PROT_ALL)
        for vaddr, data in segments:
            uc.mem_write(BASE + vaddr, data)
        uc.mem_write(STOP, abi.ret)
        uc.mem_write(READ, abi.ret)
        state = _CounterState(emu_stop=STOP, reg_read=READ, mask_reg=PSTATE_ID, mask_bit=PSTATE_I, **fields)
        uc.mem_write(STATE, bytes(state))
        set_up_call(uc, abi, (UC, 0x4000_0000, size, STATE), STACK, RET)
        stopped_with: list[int] = []
        uc.hook_add(UC_HOOK_CODE, lambda uc, *_: stopped_with.append(uc.reg_read(abi.args[0])), begin=STOP,
                    end=STOP)

        def reg_read(uc: Uc, *_: object) -> None:  # uc_reg_read(engine, PSTATE, uint32_t *) -> 0
            assert uc.reg_read(abi.args[0]) == UC and uc.reg_read(abi.args[1]) & 0xFFFF_FFFF == PSTATE_ID
            uc.mem_write(uc.reg_read(abi.args[2]), pstate.to_bytes(4, "little"))
            uc.reg_write(abi.result, 0)

        uc.hook_add(UC_HOOK_CODE, reg_read, begin=READ, end=READ)
        uc.emu_start(BASE + entry, RET)
        after = _CounterState.from_buffer_copy(uc.mem_read(STATE, ctypes.sizeof(_CounterState)))
        return after, stopped_with[0] if stopped_with else None

    return call


def _fields(state: _CounterState) -> tuple[int, ...]:
    return (state.used, state.limit, state.stopped, state.steps_left, state.steps)


@pytest.mark.parametrize("arch", sorted(ABIS))
def test_block_hook_counts_each_block_and_stops_the_engine_at_the_limit(arch: str) -> None:
    call = _emulated_hook(arch)

    def run(size: int, used: int, limit: int) -> tuple[int, int, int | None]:
        after, engine = call(size, used=used, limit=limit)
        return after.used, after.stopped, engine

    assert run(40, 0, 100) == (40, 0, None)
    assert run(40, 96, 100) == (136, 0, None)  # a block that starts below the limit counts whole
    assert run(40, 100, 100) == (100, 1, UC)  # one that would start at the limit is not counted
    assert run(4, 1 << 63, 1) == (1 << 63, 1, UC)  # the comparison is unsigned
    assert run(0xFFFF_FFFF, 0, 1 << 63) == (0xFFFF_FFFF, 0, None)  # the size is a u32


@pytest.mark.parametrize("arch", sorted(ABIS))
def test_block_hook_steps_one_block_at_a_time_while_masked_and_before_the_deadline(arch: str) -> None:
    call = _emulated_hook(arch)
    masked, unmasked = PSTATE_I | 0x3C5, 0x345  # DAIF with and without I, EL1h
    steps = {"used": 100, "limit": 100, "steps_left": 3, "steps": 1, "deadline": 200}
    # At the limit, a step: the block runs, the next one would stop (limit = used + 1).
    after, engine = call(40, masked, **steps)
    assert (_fields(after), engine) == ((140, 101, 0, 2, 2), None)
    # Below the limit no step is taken, and the register is not read.
    after, engine = call(40, unmasked, **{**steps, "limit": 104})
    assert (_fields(after), engine) == ((140, 104, 0, 3, 1), None)
    # Each of these stops the engine, the block not counted: I clear, no step left, the deadline.
    for stop in ({"pstate": unmasked}, {"steps_left": 0}, {"deadline": 100}, {"deadline": 99}):
        fields = {**steps, "pstate": masked, **stop}
        after, engine = call(40, **fields)
        assert (_fields(after), engine) == ((100, 100, 1, fields["steps_left"], 1), UC), stop
    # The deadline is one below where the step is taken: 101 allows the block at 100.
    after, engine = call(40, masked, **{**steps, "deadline": 101})
    assert (_fields(after), engine) == ((140, 101, 0, 2, 2), None)


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
