"""kvm_update_stolen_time at vcpu_load (docs/semantics.md section 2) and the section 6 host hazards."""

import struct

import pytest

from pvtime.abi import smccc
from pvtime.kvm import Quirk
from tests.conftest import make_env


def record(env, i=0):
    return struct.unpack_from("<Q", env.machine.pvtime_mem, 64 * i + 8)[0]


def load(env, i=0, task=None):
    env.load(i, task)  # a KVM_RUN: vcpu_load updates the record


def test_each_load_adds_run_delay_growth_since_the_last():
    env = make_env(1)
    env.host.hold(env.tasks[0], 100)
    load(env)
    assert record(env) == 0
    env.host.hold(env.tasks[0], 1_000)
    load(env)
    assert record(env) == 1_000
    env.host.hold(env.tasks[0], 2_500)
    load(env)
    assert record(env) == 3_500


def test_update_runs_before_pv_time_st_and_the_first_load_is_a_baseline():
    env = make_env(1)
    env.host.hold(env.tasks[0], 4_000)
    load(env)
    assert record(env) == 0  # the thread's wait before the vCPU existed is not this vCPU's steal
    env.host.hold(env.tasks[0], 1_000)
    load(env)
    assert record(env) == 1_000


def test_linux_quirk_counts_the_whole_run_delay_at_the_first_load():
    # Linux: last_steal starts at 0, so the first load adds the task's whole run_delay.
    env = make_env(1)
    env.vm.enable_quirks(Quirk.STEAL_ACROSS_TASKS)
    env.host.hold(env.tasks[0], 4_000)
    load(env)
    assert record(env) == 4_000


def test_the_value_is_re_read_from_guest_memory_not_cached():
    env = make_env(1)
    load(env)
    env.machine.pvtime_mem[8:16] = struct.pack("<Q", 10**9)  # the guest RAM says otherwise
    env.host.hold(env.tasks[0], 5)
    load(env)
    assert record(env) == 10**9 + 5


def test_sleeping_time_is_not_steal():
    env = make_env(1)
    task = env.tasks[0]
    with env.host.on_cpu(task, 0) as slice_:
        env.cpu(0).script.append(lambda: None)
        env.vcpu(0).run()
        task.depart(slice_.now_ns, runnable=False)  # the thread blocks (a vCPU in WFI)
    env.host.idle(10**6)
    load(env)
    assert task.run_delay_ns == 0
    assert record(env) == 0


def test_unbacked_ipa_does_nothing_and_keeps_the_baseline():
    env = make_env(1)
    load(env)
    env.host.hold(env.tasks[0], 700)
    mem = env.machine.pvtime_mem
    env.vm.set_user_memory_region(1, 0x090A_0000, 0, None)  # the VMM removes the region
    load(env)  # nothing to update: the baseline stays where the first load put it
    env.vm.set_user_memory_region(1, 0x090A_0000, len(mem), mem)
    load(env)
    assert record(env) == 700  # nothing lost


def test_update_wraps_modulo_2_64():
    env = make_env(1)
    load(env)
    env.machine.pvtime_mem[8:16] = struct.pack("<Q", 2**64 - 10)
    env.host.hold(env.tasks[0], 25)
    load(env)
    assert record(env) == 15


class TestVcpuMovesToAnotherThread:
    """docs/semantics.md section 6: `now - last_steal` across two tasks' run_delay."""

    def setup_env(self, quirks):
        env = make_env(1)
        env.vm.enable_quirks(quirks)
        old, new = env.tasks[0], env.host.spawn("new-vcpu-thread")
        load(env, task=old)
        env.host.hold(old, 9_000)
        load(env, task=old)  # last_steal = 9000 from the old thread
        env.host.hold(new, 1_000)
        with env.host.on_cpu(new, 0):
            pass  # the new thread has run_delay 1000 < 9000
        env.host.hold(new, 300)
        load(env, task=new)
        return env

    def test_default_rebaselines_on_the_new_task_and_does_not_wrap(self):
        env = self.setup_env(Quirk.NONE)
        assert record(env) == 9_000
        env.host.hold(env.host.tasks[-1], 50)
        load(env, task=env.host.tasks[-1])
        assert record(env) == 9_050

    def test_linux_quirk_mixes_the_tasks_and_wraps(self):
        env = self.setup_env(Quirk.STEAL_ACROSS_TASKS)
        # 9000 + (1300 - 9000) mod 2^64: a value near 2^64, which a guest reads as 100% steal.
        assert record(env) == (9_000 + 1_300 - 9_000) % 2**64 == 1_300
        assert record(env) < 9_000  # it went backwards


def test_pre_5_9_cached_quirk_restarts_from_the_host_copy():
    env = make_env(1)
    env.vm.enable_quirks(Quirk.STEAL_CACHED_IN_HOST)
    env.call(0, smccc.PV_TIME_ST)
    env.machine.pvtime_mem[8:16] = struct.pack("<Q", 5_000_000)  # e.g. restored from a snapshot
    env.host.hold(env.tasks[0], 10)
    load(env)
    assert record(env) == 10  # the restored value was overwritten: the reset hazard


@pytest.mark.parametrize("quirks", [Quirk.NONE, Quirk.STEAL_ACROSS_TASKS])
def test_same_task_behaviour_does_not_depend_on_the_quirk(quirks):
    env = make_env(1)
    env.vm.enable_quirks(quirks)
    load(env)
    for wait in (10, 20, 30):
        env.host.hold(env.tasks[0], wait)
        load(env)
    assert record(env) == 60
