"""Hypothesis properties of stolen time, host and guest together.

- Steal never decreases over any sequence of loads, waits, reads and CPU hotplug (the guest's
  accounted steal; the host record between PV_TIME_ST calls).
- The guest's /proc/stat steal equals the growth of the host thread's run_delay, to the USER_HZ
  unit (here even to the nanosecond).
"""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pvtime.guest.cputime import nsec_to_clock_t
from pvtime.guest.rq_clock import RqClock
from pvtime.guest.kernel import KernelOptions, ModelKernel, Workload
from pvtime.kvm import HaltExit, IntrExit
from tests.conftest import RecordingCpu, make_env

ops = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.integers(0, 50_000_000)),
    st.tuples(st.just("load"), st.just(0)),
    st.tuples(st.just("read"), st.just(0)),
    st.tuples(st.just("offline"), st.just(0)),
    st.tuples(st.just("online"), st.just(0)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_steal_never_decreases(sequence):
    env = make_env(1)
    kernel = ModelKernel()
    cpu = RecordingCpu(env, 0)

    def boot():  # what ModelKernel.main does on the boot CPU
        kernel.pv_probed = kernel.pv.init(cpu)
        assert kernel.pv_probed
        kernel.ticks.stat(0)
        kernel.rq[0] = RqClock()
        assert kernel.cpu_up(cpu, 0, boot=True)

    env.guest(0, boot)
    last_guest, last_record, online = 0, 0, True

    def step(op):  # guest code, after the KVM_RUN's vcpu_load updated the record
        nonlocal last_guest, last_record, online
        record = struct.unpack_from("<Q", env.machine.pvtime_mem, 8)[0]
        if op == "offline" and online:
            kernel.cpu_down(0)
            online = False
        elif op == "online" and not online:
            kernel.cpu_up(cpu, 0)  # PV_TIME_ST: the record restarts from 0
            online, record, last_record = True, 0, 0
        elif op == "read" and online:
            kernel.ticks.account_process_tick(0, kernel.steal_clock(cpu, 0), user=True, idle=False)
            guest = kernel.ticks.stat(0).steal
            assert guest >= last_guest
            last_guest = guest
        assert record >= last_record
        last_record = record

    for op, arg in sequence:
        if op == "wait":
            env.host.hold(env.tasks[0], arg)
            continue
        env.guest(0, lambda op=op: step(op))


@pytest.mark.parametrize("nohz_idle", [True, False])  # the tick stopped while idle, or periodic
@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30_000_000), st.integers(100_000, 9_000_000)), min_size=1, max_size=30),
       st.integers(0, 2**16))
def test_proc_stat_steal_equals_run_delay_growth(nohz_idle, slices, seed):
    env = make_env(1)
    kernel = ModelKernel(KernelOptions(nohz_idle=nohz_idle,
                                       workload=Workload(busy_ns=(100_000, 3_000_000),
                                                         idle_ns=(0, 2_000_000), seed=seed)))
    env.machine.load_model_guest(kernel)
    task, vcpu = env.tasks[0], env.vcpu(0)
    host = env.host
    first = None
    wake = None
    ticks_after_last_wait = None

    def run_slice(budget):
        nonlocal first, wake
        with host.on_cpu(task, budget) as slice_:
            if first is None:
                first = task.run_delay_ns
            ex = vcpu.run()
            if isinstance(ex, HaltExit):
                task.depart(slice_.now_ns, runnable=False)
                wake = ex.wake_at_ns
            else:
                assert isinstance(ex, IntrExit)

    # The thread waits runnable (steal) or, when the guest halted, sleeps (not steal); then runs.
    for wait, budget in slices:
        if wake is not None:
            host.idle(max(0, wake - host.clock_ns))
            wake = None
        else:
            host.hold(task, wait)
        run_slice(budget)
    # No more waits: run until the guest has taken a tick after the last load.
    ticks_after_last_wait = kernel.tick_count.get(0, 0)
    while kernel.tick_count.get(0, 0) <= ticks_after_last_wait:
        if wake is not None:
            host.idle(max(0, wake - host.clock_ns))
            wake = None
        run_slice(5_000_000)
    growth = task.run_delay_ns - first
    steal = kernel.ticks.stat(0).steal
    assert steal == growth
    assert int(kernel.proc_stat().splitlines()[1].split()[8]) == nsec_to_clock_t(growth)
