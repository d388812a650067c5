"""The fast traps: counter reads and the simple SMCCC calls served without a Python call.

A guest polls the counter (`mrs x0, cntvct_el0`) far more often than it does anything else the
hypervisor serves, and a probe or a benchmark makes the same SMCCC call again and again. Through
the Python hooks each costs microseconds; `native/fast_traps.c` serves them in C from parameters
published by the Python side, and hands everything else to the Python hooks (`traps`), so the
results are the same bit for bit:

- A read of CNTVCT_EL0 or CNTPCT_EL0 (the MRS filter's next hook): when CNTKCTL_EL1 does not
  enable EL0 access, PSTATE is read, and an EL0 read is left to the engine (which traps it to
  EL1). Otherwise the access is charged `SYSREG_ACCESS_INSNS` instruction times on the block
  counter, and the value is the one the hypervisor would give at the time the budget would
  account: with `used` the block counter's bytes, `accounted`, `time_rem`, `now_ns`,
  `deadline_ns` the budget's state at its last accounting,

      insns = (used - accounted) / 4
      now   = min(deadline_ns, now_ns + (insns * 1e9 + time_rem) // insns_per_sec)   (now_ns if insns == 0)
      count = now * counter_hz // 1e9                                              (the host's counter)
      value = (count - offset) mod 2^64                                          (CounterParams)

  The budget's own accounting carries the remainder from one call to the next, so accounting
  later in one step gives the same time, instruction count and debt as accounting at each read:
  the C side never changes the budget, it only reads ahead.
- An HVC whose (x0, x1) matches a published `HypercallAnswer` writes x0..x3 and counts the call,
  unless the time reached by then ends the slice (the Python hook then stops the engine, as after
  any call). The count is handed to the hypervisor (`note_hypercalls`) when the execute() ends.
- Anything else, or a value that would leave 64 bits (the C side has no 128-bit division), goes
  to the Python hook.

The published state is refreshed before every run of the engine and after every Python hook
(which may account time, move the deadline, write CNTKCTL_EL1), and turned off between
executes. Where no shared object fits the host, or with PVTIME_NATIVE=0, the same logic runs as
Python hooks (`native=False`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

from unicorn import UC_HOOK_INTR, Uc
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.abi.linux import NSEC_PER_SEC
from pvtime.abi.sysregs import CNTKCTL_EL0PCTEN, CNTKCTL_EL0VCTEN
from pvtime.abi.widths import U32, U64
from pvtime.cpu.fastpath import CounterParams, HypercallAnswer
from pvtime.cpu.unicorn.registers import Registers
from pvtime.cpu.unicorn.native import (
    FAST_TRAPS, SYS_HOOK, BlockCounter, NativeNext, SysHook, _choose, _hook_add, native_symbol,
)

MAX_ANSWERS = 8
EXCP_HVC = 11  # QEMU's EXCP_HVC, as UC_HOOK_INTR reports an HVC
_PSTATE_EL = 0xC  # PSTATE.M[3:2]: the exception level

# The counters' (op0, op1, CRn, CRm) and op2 -> (is the virtual counter, CNTKCTL_EL1 enable bit).
_COUNTER_PREFIX = (3, 3, 14, 0)
_COUNTERS = {2: (True, CNTKCTL_EL0VCTEN), 1: (False, CNTKCTL_EL0PCTEN)}

INTR_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
IntrHook = Callable[[int, int], None]  # (engine handle, intno)


class _Answer(ctypes.Structure):
    """struct answer."""

    _fields_ = [("fid", ctypes.c_uint64), ("x1", ctypes.c_uint64), ("any_x1", ctypes.c_uint64),
                ("result", ctypes.c_uint64 * 4)]


class FastTrapsState(ctypes.Structure):
    """struct fast_traps: the C hooks' state (the same layout on both host architectures)."""

    _fields_ = [
        ("next_sys", ctypes.c_void_p), ("next_sys_user", ctypes.c_void_p),
        ("next_intr", ctypes.c_void_p), ("next_intr_user", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p), ("reg_write", ctypes.c_void_p), ("used", ctypes.c_void_p),
        ("x0_id", ctypes.c_uint32), ("x28_id", ctypes.c_uint32), ("x29_id", ctypes.c_uint32),
        ("x30_id", ctypes.c_uint32), ("pstate_id", ctypes.c_uint32), ("hvc_intno", ctypes.c_uint32),
        ("accounted", ctypes.c_uint64), ("time_rem", ctypes.c_uint64), ("now_ns", ctypes.c_uint64),
        ("deadline_ns", ctypes.c_uint64), ("insns_per_sec", ctypes.c_uint64),
        ("counter_on", ctypes.c_uint64), ("counter_hz", ctypes.c_uint64), ("voffset", ctypes.c_uint64),
        ("poffset", ctypes.c_uint64), ("cntkctl", ctypes.c_uint64), ("charge", ctypes.c_uint64),
        ("n_answers", ctypes.c_uint64), ("answers", _Answer * MAX_ANSWERS),
        ("reads", ctypes.c_uint64), ("calls", ctypes.c_uint64),
    ]


_X_IDS = frozenset([*range(A.UC_ARM64_REG_X0, A.UC_ARM64_REG_X28 + 1), A.UC_ARM64_REG_X29, A.UC_ARM64_REG_X30])
assert A.UC_ARM64_REG_X3 == A.UC_ARM64_REG_X0 + 3, "the C side reads x1..x3 as x0's id + 1..3"


class FastTraps:
    """The fast counter reads and hypercalls of one engine.

    Install it before any other UC_HOOK_INTR hook: it registers the engine's interrupt hook, which
    hands what it does not serve to `slow_intr`; `mrs_next` is what the MRS filter calls, and it
    hands what it does not serve to `slow_mrs`. `native` as for `BlockCounter`.
    """

    def __init__(self, uc: Uc, regs: Registers, counter: BlockCounter, charge_insns: int, slow_mrs: SysHook,
                 slow_intr: IntrHook, *, native: bool | None = None) -> None:
        self._state = s = FastTrapsState()
        s.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        s.reg_write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value
        s.used = counter.used_address
        s.x0_id, s.x28_id, s.x29_id, s.x30_id = (A.UC_ARM64_REG_X0, A.UC_ARM64_REG_X28, A.UC_ARM64_REG_X29,
                                                 A.UC_ARM64_REG_X30)
        s.pstate_id, s.hvc_intno, s.charge = A.UC_ARM64_REG_PSTATE, EXCP_HVC, 4 * charge_insns
        self._charge_insns = charge_insns
        self._regs = regs
        self._counter = counter
        self._calls_noted = 0
        # The Python twins read the published state from Python objects, not the C struct.
        self._time: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
        self._params: CounterParams | None = None
        self._answers: dict[tuple[int, int | None], tuple[int, int, int, int]] = {}
        self._py_reads = self._py_calls = 0
        address = _choose(FAST_TRAPS, native)
        self.native = address is not None
        state_ptr = ctypes.cast(ctypes.byref(s), ctypes.c_void_p).value
        assert state_ptr is not None
        self._slow_mrs = SYS_HOOK(slow_mrs)
        self._slow_intr = INTR_HOOK(lambda uc, intno, user: slow_intr(uc, intno))
        s.next_sys = ctypes.cast(self._slow_mrs, ctypes.c_void_p).value
        s.next_intr = ctypes.cast(self._slow_intr, ctypes.c_void_p).value
        self.mrs_next: SysHook | NativeNext
        if address is not None:
            self.mrs_next = NativeNext(native_symbol(FAST_TRAPS, "pvtime_fast_mrs"), state_ptr)
            intr: object = ctypes.c_void_p(native_symbol(FAST_TRAPS, "pvtime_fast_intr"))
        else:
            self.mrs_next = self._python_mrs(slow_mrs)
            intr = self._python_intr(slow_intr)
        self._intr = intr  # kept alive as long as the engine may call it
        _hook_add(uc, UC_HOOK_INTR, intr, ctypes.byref(s))

    # --- what the Python side publishes --------------------------------------------------------

    def publish_time(self, accounted: int, time_rem: int, now_ns: int, deadline_ns: int, insns_per_sec: int) -> None:
        """The budget's state as of its last accounting, and the slice's deadline."""
        s = self._state
        self._time = (accounted, time_rem, now_ns, deadline_ns, insns_per_sec)
        if (accounted | time_rem | now_ns | deadline_ns | insns_per_sec) >> 64:
            insns_per_sec = 0  # out of the C side's range: it hands every access to Python
        s.accounted, s.time_rem, s.now_ns, s.deadline_ns, s.insns_per_sec = (
            accounted, time_rem, now_ns, deadline_ns, insns_per_sec)

    def publish_counter(self, counter: CounterParams | None) -> None:
        """How the counters read now (None: every read through the hypervisor)."""
        s = self._state
        self._params = counter
        if counter is None:
            s.counter_on = 0
            return
        s.counter_hz, s.voffset, s.poffset, s.cntkctl = (
            counter.counter_hz & U64, counter.voffset & U64, counter.poffset & U64, counter.cntkctl & U64)
        s.counter_on = 1

    def publish_answers(self, answers: Sequence[HypercallAnswer]) -> None:
        """The calls answered here (the first `MAX_ANSWERS`; the others go through the hypervisor)."""
        s = self._state
        answers = answers[:MAX_ANSWERS]
        self._answers = {}
        for answer in answers:
            self._answers.setdefault((answer.fid & U32, None if answer.x1 is None else answer.x1 & U32),
                                     tuple(v & U64 for v in answer.result))  # type: ignore[arg-type]
        for slot, answer in zip(s.answers, answers, strict=False):
            slot.fid = answer.fid & U32
            slot.x1 = (answer.x1 or 0) & U32
            slot.any_x1 = answer.x1 is None
            slot.result[:] = [v & U64 for v in answer.result]
        s.n_answers = len(answers)

    def stop(self) -> int:
        """Serve nothing more until the next publish; the calls answered since the last stop()."""
        s = self._state
        s.counter_on = s.n_answers = 0
        self._params, self._answers = None, {}
        total = self.calls
        calls, self._calls_noted = total - self._calls_noted, total
        return calls

    @property
    def reads(self) -> int:
        """Counter reads served here so far."""
        return self._state.reads + self._py_reads

    @property
    def calls(self) -> int:
        """Hypercalls answered here so far."""
        return self._state.calls + self._py_calls

    # --- the Python twins of the C hooks -------------------------------------------------------

    def _now(self) -> int | None:
        """time_now(): the slice's time once the code executed so far is accounted (None: the
        published state is out of range, Python serves the access)."""
        accounted, time_rem, now_ns, deadline_ns, insns_per_sec = self._time
        if not insns_per_sec:
            return None
        insns = (self._counter.used - accounted) // 4
        if not insns:
            return now_ns
        return min(deadline_ns, now_ns + (insns * NSEC_PER_SEC + time_rem) // insns_per_sec)

    def _python_mrs(self, slow: SysHook) -> SysHook:
        counter, charge, regs = self._counter, 4 * self._charge_insns, self._regs
        value = ctypes.c_uint64()

        def on_mrs(uc: int, reg: int, cp: Any, user: Any) -> int:
            params = self._params
            c = cp.contents
            found = _COUNTERS.get(c.op2) if (c.op0, c.op1, c.crn, c.crm) == _COUNTER_PREFIX else None
            if params is None or found is None:
                return slow(uc, reg, cp, user)
            virtual, enable = found
            if not params.cntkctl & enable and not regs.pstate() & _PSTATE_EL:
                return 0  # EL0 without access: the engine traps it to EL1
            counter.charge(charge)
            now = self._now()
            if now is None:
                counter.charge(-charge)
                return slow(uc, reg, cp, user)
            count = now * params.counter_hz // NSEC_PER_SEC
            value.value = (count - (params.voffset if virtual else params.poffset)) & U64
            if reg in _X_IDS:
                uclib.uc_reg_write(uc, reg, ctypes.byref(value))
            self._py_reads += 1
            return 1

        return on_mrs

    def _python_intr(self, slow: IntrHook) -> object:
        regs = self._regs

        def on_intr(uc: int, intno: int, user: int | None) -> None:
            if intno == EXCP_HVC and self._answers:
                args = regs.read_args()
                fid, x1 = args[0] & U32, args[1] & U32
                result = self._answers.get((fid, x1)) or self._answers.get((fid, None))
                if result is not None:
                    now = self._now()
                    if now is not None and now < self._time[3]:
                        regs.write_args(list(result))
                        self._py_calls += 1
                        return
            slow(uc, intno)

        return INTR_HOOK(on_intr)
