"""Steal survives save/restore of guest memory into a new VM with the IPA set again (Linux >= 5.9)."""

import struct

from pvtime.abi import smccc
from pvtime.abi.uapi import KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA
from pvtime.host import Host
from pvtime.kvm import Kvm, Quirk
from pvtime.vmm import Machine, MachineConfig
from tests.conftest import ScriptCpu, make_env, run_guest_code


def record(machine, i=0):
    return struct.unpack_from("<Q", machine.pvtime_mem, 64 * i + 8)[0]


def restore_into_new_vm(src, quirks=Quirk.NONE):
    """A VMM restoring a snapshot: new host, new VM, memory copied, attributes set again."""
    host = Host(src.host.counter_hz)
    dst = Machine(Kvm(host), MachineConfig("restored", vcpus=1, memory_mib=2, pvtime=False, quirks=quirks),
                  cpus=ScriptCpu)
    dst.ram[:] = src.machine.ram
    dst.pvtime_mem = bytearray(src.machine.pvtime_mem)
    dst.vm.set_user_memory_region(Machine.PVTIME_SLOT, 0x090A_0000, len(dst.pvtime_mem), dst.pvtime_mem)
    dst.vcpus[0].set_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, 0x090A_0000)
    task = host.spawn("vcpu0")
    host.hold(task, 30_000_000)  # the new thread already has a large run_delay of its own
    with host.on_cpu(task, 0):
        pass
    return host, dst, task


def load(host, machine, task):
    """A KVM_RUN of the machine's vCPU 0 on `task` that executes nothing: the vcpu_load."""
    run_guest_code(host, task, machine.vcpus[0], machine.cpus[0], lambda: None)


def test_steal_continues_after_restore_without_reset_or_jump():
    src = make_env(1)
    src.call(0, smccc.PV_TIME_ST)
    for wait in (1_000, 2_000, 3_000):
        src.host.hold(src.tasks[0], wait)
        src.load(0)
    saved = record(src.machine)
    assert saved == 6_000
    host, dst, task = restore_into_new_vm(src)
    load(host, dst, task)
    assert record(dst) == saved  # no reset, and no jump by the new thread's own run_delay
    host.hold(task, 500)
    load(host, dst, task)
    assert record(dst) == saved + 500


def test_linux_first_load_after_restore_jumps_by_the_threads_run_delay():
    src = make_env(1)
    src.call(0, smccc.PV_TIME_ST)
    host, dst, task = restore_into_new_vm(src, Quirk.STEAL_ACROSS_TASKS)
    load(host, dst, task)
    assert record(dst) == 30_000_000  # the docs/semantics.md section 6 "large jump" hazard


def test_pre_5_9_host_resets_steal_after_restore():
    src = make_env(1)
    src.call(0, smccc.PV_TIME_ST)
    src.host.hold(src.tasks[0], 9_000)
    src.load(0)
    host, dst, task = restore_into_new_vm(src, Quirk.STEAL_CACHED_IN_HOST)
    load(host, dst, task)
    assert record(dst) < 9_000  # the hazard: steal went backwards
