"""Linux under pvtime: wall time to boot the packaged kernel to /init with 1 vCPU (goal <= 2 s,
median of 5), guest MIPS over that boot, and the same kernel on bare unicorn (goal: pvtime >= 0.7x
its MIPS), side by side; then where pvtime's time goes (a cProfile summary).

Run: ``python bench/bench_linux.py [--runs N] [--no-profile] [--top N]``. Prints figures only:
wall seconds (the goal's measure) and this process's CPU seconds beside them, which the other
work on a shared machine disturbs less; the load average before and after.

(a) pvtime: `run_guest` as `pvtime linux run` calls it, with its default command line
    (`console=ttyAMA0`), the packaged Image.gz and initramfs. The run is stopped when the console
    prints "Run /init"; wall seconds and the guest instructions executed to that point.
(b) bare unicorn: the same kernel, device tree and initramfs, laid out in RAM by pvtime's VMM
    (loading is not what is measured), run on one unicorn engine with only what Linux cannot boot
    without, emulated here for the bench alone and not shared with pvtime: a GICv2 that knows the
    virtual timer's PPI and the UART's SPI, the virtual timer, a PL011 that transmits only, and
    PSCI/SMCCC answering "version 1.0/1.1, nothing else supported" and SYSTEM_OFF. Devices are
    unicorn MMIO callbacks (no engine stop). Time is instructions, as in pvtime (1 per ns, a
    62.5 MHz counter); the engine is bounded by pvtime's native block counter and sees timer
    registers through pvtime's native system-register filter (the two C hooks are engine
    primitives; every other MRS/MSR runs in the engine). Shortcuts: no steal, no priorities, no
    SGIs, IRQ entry only from EL1h -- it stops at "Run /init", before any user code.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import io
import pstats
import statistics
import time
from dataclasses import dataclass, field

from common import loadavg, machine_line
from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_MODE_ARM, UC_PROT_ALL, Uc, UcError
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.abi.uapi import REG_PC, reg_x
from pvtime.cpu import CpuKind
from pvtime.cpu.unicorn.native import BlockCounter, SysregFilter
from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.sim import guest_run
from pvtime.sim.guest_run import GuestRunOptions, run_guest
from pvtime.vmm import MachineConfig, build_machine
from pvtime.vmm.images import linux_image
from pvtime.vmm.linux_boot import LinuxBoot

CMDLINE = "console=ttyAMA0"  # what `pvtime linux run` passes by default
INIT_MARK = b"Run /init"
MEMORY_MIB = 128
IPS = 1_000_000_000
COUNTER_HZ = 62_500_000


class AtInit(Exception):
    """Raised from the console when the kernel says it runs /init: the boot is over."""


def packaged_boot() -> LinuxBoot:
    return LinuxBoot.from_files(linux_image("Image.gz"), linux_image("initramfs.cpio.gz"), CMDLINE)


# --- (a) pvtime ------------------------------------------------------------------------------


@dataclass
class Boot:
    wall_s: float
    instructions: int
    console: bytes = b""
    cpu_s: float = 0.0  # this process's CPU time over the boot: less sensitive to the machine's load

    @property
    def mips(self) -> float:
        return self.instructions / self.wall_s / 1e6


def pvtime_boot(boot: LinuxBoot) -> Boot:
    """Boot through run_guest (the `pvtime linux run` path) until the console says "Run /init"."""
    machines = []

    def capture(*args: object, **kwargs: object) -> object:
        machine = build_machine(*args, **kwargs)
        machines.append(machine)
        return machine

    out = bytearray()

    def console(data: bytes) -> None:
        out.extend(data)
        if INIT_MARK in out[-64:]:
            raise AtInit

    options = GuestRunOptions(vcpus=1, host_cpus=1, memory_mib=MEMORY_MIB, time_limit_ns=30_000_000_000,
                              instructions_per_sec=IPS)
    guest_run.build_machine = capture  # to read the vCPU's instruction count at /init
    start, cpu = time.perf_counter(), time.process_time()
    try:
        run_guest(boot, options, console=console)
        raise RuntimeError("the guest never printed 'Run /init'")
    except AtInit:
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        guest_run.build_machine = build_machine
    return Boot(wall, machines[0].cpus[0].instructions, bytes(out), cpu)


# --- (b) bare unicorn ------------------------------------------------------------------------

TIMER_REGS = {  # (op0, op1, CRn, CRm, op2)
    "CNTFRQ": (3, 3, 14, 0, 0), "CNTPCT": (3, 3, 14, 0, 1), "CNTVCT": (3, 3, 14, 0, 2),
    "CNTP_TVAL": (3, 3, 14, 2, 0), "CNTP_CTL": (3, 3, 14, 2, 1), "CNTP_CVAL": (3, 3, 14, 2, 2),
    "CNTV_TVAL": (3, 3, 14, 3, 0), "CNTV_CTL": (3, 3, 14, 3, 1), "CNTV_CVAL": (3, 3, 14, 3, 2),
    "CNTKCTL": (3, 0, 14, 1, 0),
}
_BY_KEY = {v: k for k, v in TIMER_REGS.items()}
VTIMER_PPI = 27
UART_SPI = 33
SPURIOUS = 1023
WFI = 0xD503_207F


@dataclass
class BareGic:
    """Just enough GICv2 for Linux's irq-gic driver on one CPU: enables, acknowledge, EOI."""

    dctlr: int = 0
    cctlr: int = 0
    enabled: set[int] = field(default_factory=set)
    active: set[int] = field(default_factory=set)
    store: dict[int, int] = field(default_factory=dict)  # other registers, kept as written

    def dist_read(self, off: int) -> int:
        if off == 0x000:
            return self.dctlr
        if off == 0x004:
            return 1  # TYPER: 64 interrupts, 1 CPU
        if off == 0x008:
            return 0x0200_043B
        if 0x100 <= off < 0x180 or 0x180 <= off < 0x200:
            n = (off & 0x7F) * 8
            return sum(1 << i for i in range(32) if n + i in self.enabled)
        if 0x800 <= off < 0x820:
            return 0x0101_0101  # ITARGETSR of SGIs/PPIs: this CPU
        return self.store.get(0x1_0000 + off, 0)

    def dist_write(self, off: int, value: int) -> None:
        if off == 0x000:
            self.dctlr = value & 1
        elif 0x100 <= off < 0x200:
            n = (off & 0x7F) * 8
            for i in range(32):
                if value >> i & 1:
                    (self.enabled.add if off < 0x180 else self.enabled.discard)(n + i)
        else:
            self.store[0x1_0000 + off] = value

    def highest(self, levels: dict[int, bool]) -> int:
        if not self.dctlr & 1 or not self.cctlr & 1:
            return SPURIOUS
        ready = [i for i, up in levels.items() if up and i in self.enabled and i not in self.active]
        return min(ready) if ready else SPURIOUS

    def cpu_read(self, off: int, levels: dict[int, bool]) -> int:
        if off == 0x000:
            return self.cctlr
        if off == 0x00C:  # IAR
            irq = self.highest(levels)
            if irq != SPURIOUS:
                self.active.add(irq)
            return irq
        if off == 0x0FC:
            return 0x0202_043B
        return self.store.get(off, 0)

    def cpu_write(self, off: int, value: int) -> None:
        if off == 0x000:
            self.cctlr = value
        elif off == 0x010 and not self.cctlr & (1 << 9) or off == 0x1000:  # EOIR (EOImode 0), DIR
            self.active.discard(value & 0x3FF)
        else:
            self.store[off] = value


class BareLinux:
    """One unicorn engine booting the kernel laid out in `ram`, with the bench's own devices."""

    def __init__(self, ram: bytes, ram_base: int, pc: int, x: list[int]) -> None:
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_cpu_model(A.UC_CPU_ARM64_A72)
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (1, 1, 3, 6, 0, 0x501))  # SCR_EL3: NS, HCE, RW (HVC on)
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (1, 1, 3, 4, 0, 1 << 31))  # HCR_EL2.RW: EL1 is AArch64
        self.uc = uc
        self.ram = bytearray(ram)
        self._view = (ctypes.c_char * len(self.ram)).from_buffer(self.ram)
        uc.mem_map_ptr(ram_base, len(self.ram), UC_PROT_ALL, ctypes.addressof(self._view))
        self.ram_base = ram_base
        uc.reg_write(A.UC_ARM64_REG_PSTATE, 0x3C5)  # EL1h, DAIF masked
        for i, v in enumerate(x):
            uc.reg_write(getattr(A, f"UC_ARM64_REG_X{i}"), v)
        uc.reg_write(A.UC_ARM64_REG_PC, pc)
        self.gic = BareGic()
        self.counter = BlockCounter(uc, native=True)
        self.cval = 0
        self.ctl = 0
        self.idle_ns = 0
        self.uart_raw = 0
        self.uart_mask = 0
        self.console = bytearray()
        self.done: str | None = None
        self.error: BaseException | None = None
        uc.mmio_map(0x0800_0000, 0x1_0000, self._dist_read, None, self._dist_write, None)
        uc.mmio_map(0x0801_0000, 0x1_0000, self._cpu_read, None, self._cpu_write, None)
        uc.mmio_map(0x0900_0000, 0x1000, self._uart_read, None, self._uart_write, None)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        regs = list(TIMER_REGS.values())
        self._filters = [SysregFilter(uc, A.UC_ARM64_INS_MRS, [regs], self._on_mrs, native=True),
                         SysregFilter(uc, A.UC_ARM64_INS_MSR, [regs], self._on_msr, native=True)]
        self._cell = ctypes.c_uint64()
        self._translate = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                                           ctypes.POINTER(ctypes.c_uint64))(("uc_vmem_translate", uclib))

    # time: instructions (1 per ns) plus the idle time skipped at WFI
    def insns(self) -> int:
        return self.counter.used // 4

    def count(self) -> int:
        return (self.insns() + self.idle_ns) * COUNTER_HZ // IPS

    def timer_level(self) -> bool:
        return self.ctl & 3 == 1 and self.count() >= self.cval

    def levels(self) -> dict[int, bool]:
        return {VTIMER_PPI: self.timer_level(), UART_SPI: bool(self.uart_raw & self.uart_mask)}

    def _kick(self) -> None:
        self.counter.arm(0)  # stop after the current block: an interrupt may be due

    # devices (unicorn MMIO callbacks: uc, offset, size, [value,] user)
    def _dist_read(self, uc: Uc, off: int, size: int, user: object) -> int:
        return self.gic.dist_read(off)

    def _dist_write(self, uc: Uc, off: int, size: int, value: int, user: object) -> None:
        self.gic.dist_write(off, value)
        self._kick()

    def _cpu_read(self, uc: Uc, off: int, size: int, user: object) -> int:
        return self.gic.cpu_read(off, self.levels())

    def _cpu_write(self, uc: Uc, off: int, size: int, value: int, user: object) -> None:
        self.gic.cpu_write(off, value)
        self._kick()

    def _uart_read(self, uc: Uc, off: int, size: int, user: object) -> int:
        if off == 0x18:
            return 0x90  # FR: TXFE | RXFE
        if 0xFE0 <= off < 0x1000:
            return (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)[(off - 0xFE0) // 4]
        return {0x38: self.uart_mask, 0x3C: self.uart_raw, 0x40: self.uart_raw & self.uart_mask}.get(off, 0)

    def _uart_write(self, uc: Uc, off: int, size: int, value: int, user: object) -> None:
        if off == 0x00:
            self.console.append(value & 0xFF)
            self.uart_raw |= 1 << 5
            if INIT_MARK in self.console[-64:]:
                self.done = "init"
                uc.emu_stop()
        elif off == 0x38:
            self.uart_mask = value & 0x7FF
        elif off == 0x44:
            self.uart_raw &= ~value
        if self.uart_raw & self.uart_mask:
            self._kick()

    # PSCI / SMCCC over HVC
    def _on_intr(self, uc: Uc, intno: int, user: object) -> None:
        if intno != 11:
            self.error = RuntimeError(f"exception {intno} at {uc.reg_read(A.UC_ARM64_REG_PC):#x}: the bench "
                                      "harness takes none before /init")
            uc.emu_stop()
            return
        fn = uc.reg_read(A.UC_ARM64_REG_X0) & 0xFFFF_FFFF
        if fn == 0x8400_0008:  # SYSTEM_OFF
            self.done = "off"
            uc.emu_stop()
            return
        answer = {0x8400_0000: 0x1_0000, 0x8000_0000: 0x1_0001}.get(fn, 0xFFFF_FFFF_FFFF_FFFF)
        uc.reg_write(A.UC_ARM64_REG_X0, answer)

    def _on_mrs(self, handle: int, reg: int, cp: object, user: object) -> int:
        c = cp.contents  # type: ignore[attr-defined]
        name = _BY_KEY[(c.op0, c.op1, c.crn, c.crm, c.op2)]
        count = self.count()
        value = {"CNTFRQ": COUNTER_HZ, "CNTPCT": count, "CNTVCT": count, "CNTV_CTL": self.ctl
                 | (4 if self.timer_level() else 0), "CNTV_CVAL": self.cval,
                 "CNTV_TVAL": (self.cval - count) & 0xFFFF_FFFF}.get(name, 0)
        self._cell.value = value
        uclib.uc_reg_write(handle, reg, ctypes.byref(self._cell))
        return 1

    def _on_msr(self, handle: int, reg: int, cp: object, user: object) -> int:
        c = cp.contents  # type: ignore[attr-defined]
        name = _BY_KEY[(c.op0, c.op1, c.crn, c.crm, c.op2)]
        if name == "CNTV_CTL":
            self.ctl = c.val & 3
        elif name == "CNTV_CVAL":
            self.cval = c.val
        elif name == "CNTV_TVAL":
            self.cval = self.count() + (c.val & 0xFFFF_FFFF)
        self._arm()
        return 1

    def _arm(self) -> None:
        if self.ctl & 3 == 1:
            need = max(1, (self.cval * IPS + COUNTER_HZ - 1) // COUNTER_HZ - self.insns() - self.idle_ns)
            self.counter.arm(4 * need)
        else:
            self.counter.arm(1 << 42)

    def _take_irq(self) -> None:
        uc = self.uc
        pstate = uc.reg_read(A.UC_ARM64_REG_PSTATE)
        if pstate & 0xF != 0b0101:
            raise RuntimeError(f"IRQ from mode {pstate & 0xF:#x}: the bench harness enters from EL1h only")
        pc = uc.reg_read(A.UC_ARM64_REG_PC)
        vbar = uc.reg_read(A.UC_ARM64_REG_VBAR_EL1) & ~0x7FF
        uc.reg_write(A.UC_ARM64_REG_ELR_EL1, pc)
        uc.reg_write(A.UC_ARM64_REG_PSTATE, (pstate & 0xF000_0000) | 0x3C5)
        uc.reg_write(A.UC_ARM64_REG_PC, vbar + 0x280)
        uc.reg_write(A.UC_ARM64_REG_CP_REG, (4, 0, 3, 0, 0, pstate))  # SPSR_EL1, rebuilds hflags

    def run(self) -> tuple[float, float, int]:
        """Boot to "Run /init": (wall seconds, CPU seconds, instructions)."""
        uc = self.uc
        start, cpu = time.perf_counter(), time.process_time()
        polls = 0
        while self.done is None:
            asserted = self.gic.highest(self.levels()) != SPURIOUS
            masked = bool(uc.reg_read(A.UC_ARM64_REG_PSTATE) & 0x80)
            if asserted and not masked:
                self._take_irq()
                continue
            if asserted:  # masked: one block at a time, then every 4096 instructions (as pvtime polls)
                polls += 1
                self.counter.arm(1 if polls <= 256 else 4 * 4096)
            else:
                polls = 0
                self._arm()
            before = self.counter.used
            try:
                uc.emu_start(uc.reg_read(A.UC_ARM64_REG_PC), 0xFFFF_FFFF_FFFF_FFFC)
            except UcError as err:
                raise RuntimeError(f"bare unicorn stopped at {uc.reg_read(A.UC_ARM64_REG_PC):#x}: {err}") from err
            if self.error is not None:
                raise self.error
            if self.done is not None or self.counter.stopped:
                continue
            pc = uc.reg_read(A.UC_ARM64_REG_PC)
            word = int.from_bytes(uc.mem_read(self._pa(pc - 4), 4), "little")
            if word != WFI:
                raise RuntimeError(f"bare unicorn returned at {pc:#x} for no known reason ({self.counter.used - before})")
            polls = 0  # a WFI: step one block at a time again
            if not asserted and self.ctl & 3 == 1:  # idle: skip to the timer
                due = -(-self.cval * IPS // COUNTER_HZ)
                self.idle_ns = max(self.idle_ns, due - self.insns())
        return time.perf_counter() - start, time.process_time() - cpu, self.insns()

    def _pa(self, va: int) -> int:
        pa = ctypes.c_uint64()
        if self._translate(self.uc._uch, va, 4, ctypes.byref(pa)):  # noqa: SLF001 - UC_PROT_EXEC
            raise RuntimeError(f"no translation for the PC {va:#x}")
        return pa.value


def bare_setup(boot: LinuxBoot) -> BareLinux:
    """The kernel, device tree and initramfs as pvtime's VMM lays them out, on a bare engine."""
    config = MachineConfig("bare", vcpus=1, memory_mib=MEMORY_MIB, cpu=CpuKind.UNICORN, instructions_per_sec=IPS,
                           vgic=True)
    machine = build_machine(Kvm(Host(COUNTER_HZ, ncpus=1, name="host")), config, linux=boot)
    vcpu = machine.vcpus[0]
    return BareLinux(bytes(machine.ram), config.layout.ram_base, vcpu.get_one_reg(REG_PC),
                     [vcpu.get_one_reg(reg_x(i)) for i in range(4)])


def bare_boot(boot: LinuxBoot) -> Boot:
    bare = bare_setup(boot)
    wall, cpu, insns = bare.run()
    return Boot(wall, insns, bytes(bare.console), cpu)


# --- the report ------------------------------------------------------------------------------


def profile(boot: LinuxBoot, top: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    pvtime_boot(boot)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    total = next((line.strip() for line in lines if "function calls" in line), "")
    return "\n".join([total, *lines[start:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="boots of each kind (the median is reported)")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile summary")
    parser.add_argument("--top", type=int, default=20, help="functions in the profile summary")
    args = parser.parse_args(argv)
    print(machine_line())
    print(f"load before: {loadavg()}")
    boot = packaged_boot()
    pv: list[Boot] = []
    bare: list[Boot] = []
    for _ in range(args.runs):  # interleaved: a change in the machine's speed hits both alike
        pv.append(pvtime_boot(boot))
        bare.append(bare_boot(boot))
    print(f"load after:  {loadavg()}")
    same = len({b.console for b in pv}) == 1 and len({b.instructions for b in pv}) == 1
    pv_wall = statistics.median(b.wall_s for b in pv)
    pv_mips = statistics.median(b.mips for b in pv)
    bare_wall = statistics.median(b.wall_s for b in bare)
    bare_mips = statistics.median(b.mips for b in bare)
    pv_cpu = statistics.median(b.cpu_s for b in pv)
    bare_cpu = statistics.median(b.cpu_s for b in bare)
    print(f"boot to /init, packaged Linux 6.1, 1 vCPU, '{CMDLINE}', median of {args.runs}:")
    print(f"  {'':14}{'wall s':>9}{'CPU s':>8}{'guest insns':>14}{'MIPS':>9}   runs (wall s)")
    print(f"  {'pvtime':14}{pv_wall:9.3f}{pv_cpu:8.3f}{pv[0].instructions:14,}{pv_mips:9.1f}   "
          + " ".join(f"{b.wall_s:.2f}" for b in pv))
    print(f"  {'bare unicorn':14}{bare_wall:9.3f}{bare_cpu:8.3f}{bare[0].instructions:14,}{bare_mips:9.1f}   "
          + " ".join(f"{b.wall_s:.2f}" for b in bare))
    print(f"  pvtime wall <= 2 s: {'yes' if pv_wall <= 2 else 'no'}; MIPS ratio pvtime/bare: "
          f"{pv_mips / bare_mips:.2f} (goal >= 0.70; by CPU time "
          f"{(pv[0].instructions / pv_cpu) / (bare[0].instructions / bare_cpu):.2f}); "
          f"pvtime runs identical: {'yes' if same else 'NO'}")
    print(f"  console bytes to /init: pvtime {len(pv[0].console)}, bare {len(bare[0].console)}")
    if not args.no_profile:
        print("\nwhere pvtime's time goes (one boot to /init under cProfile, top by own time):")
        print(profile(boot, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
