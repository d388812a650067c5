"""The guest's LPT clocksource: probe, PV frequency, timers, sequence retry loop, event stream, EL0."""

import pytest

from pvtime import fixedpoint
from pvtime.abi.records import LPT_SEQUENCE_OFFSET, LptRecord
from pvtime.abi.sysregs import CNTFRQ_EL0, CNTKCTL_EL1, CNTV_CVAL_EL0, CNTVCT_EL0
from pvtime.guest.lpt import ArchCounter, LptClock, el0_mrs, linux_evnti
from tests.lpt.harness import boot

US = 1_000


def lpt_vm(native=25_000_000, pv=1_000_000_000):
    vm = boot(native, pv)
    vm.pv(0)
    return vm


def test_probe_gives_pv_freq_and_converted_counter():
    vm = lpt_vm()
    assert vm.clock.freq == 1_000_000_000
    assert vm.pv(2_000 * US) == 2_000_000  # 50 000 native ticks -> 2 000 000 PV ticks
    assert vm.guest(2_000 * US, lambda cpu: el0_mrs(cpu, vm.clock, CNTFRQ_EL0)) == 10**9


def test_probe_fails_without_lpt_and_on_a_bad_record():
    assert boot(25_000_000, None).guest(0, lambda cpu: LptClock.probe(cpu, [])) is None
    vm = boot(25_000_000, 10**9)
    ipa = vm.machine.vm.lpt.ipa
    vm.machine.vm.memory.write(ipa, (1).to_bytes(4, "little"))  # revision 1
    messages = []
    assert vm.guest(0, lambda cpu: LptClock.probe(cpu, messages)) is None
    assert "revision" in messages[0]


def test_timer_programmed_through_the_deadline_conversion():
    vm = lpt_vm(24_000_000)
    sf = vm.clock.factors
    for deadline in (1, 41, 42, 10**9 + 7):
        vm.guest(0, lambda cpu: vm.clock.set_cval(cpu, deadline))
        native = vm.machine.vcpus[0].timer.vtimer.cval
        assert native == fixedpoint.pv_to_native_deadline(deadline, sf)
        assert fixedpoint.native_to_pv(native, sf) >= deadline


def test_tval_write_and_read_in_pv_ticks():
    vm = lpt_vm(25_000_000)
    vm.guest(1_000 * US, lambda cpu: vm.clock.set_tval(cpu, 5_000))
    assert vm.guest(1_000 * US, lambda cpu: vm.clock.read_tval(cpu)) == 5_000
    assert vm.guest(1_000 * US, lambda cpu: vm.clock.read_cval(cpu)) == 1_000_000 + 5_000
    vm.guest(1_000 * US, lambda cpu: vm.clock.set_tval(cpu, -40 & 0xFFFF_FFFF))  # negative TVAL
    assert vm.guest(1_000 * US, lambda cpu: vm.clock.read_cval(cpu)) == 1_000_000 - 40


class Racing:
    """A GuestCpu whose host migrates (new factors, sequence + 2) right after a counter read."""

    def __init__(self, cpu, vm, times=1):
        self.cpu, self.vm, self.times = cpu, vm, times

    def __getattr__(self, name):
        return getattr(self.cpu, name)

    def mrs(self, reg):
        value = self.cpu.mrs(reg)
        if reg == CNTVCT_EL0 and self.times:
            self.times -= 1
            mem, ipa = self.vm.machine.vm.memory, self.vm.machine.vm.lpt.ipa
            old = LptRecord.unpack(mem.read(ipa, 48))
            new = LptRecord(sequence_number=old.sequence_number + 2,
                            **fixedpoint.scale_factors(100_000_000, old.pv_freq).record_fields())
            mem.write(ipa, new.pack())
        return value


def test_sequence_retry_loop_rereads_after_a_concurrent_update():
    vm = lpt_vm(25_000_000)
    value = vm.guest(1_000 * US, lambda cpu: vm.clock.read(Racing(cpu, vm)))
    assert vm.clock.stats.retries == 1 and vm.clock.stats.refreshes == 1
    # The retry used the new factors with a fresh counter read (host counter: 25 MHz, record
    # says 100 MHz here since only the record was changed): 25 000 ticks at 100 MHz -> 250 000.
    assert value == 250_000


def test_odd_sequence_is_retried_and_a_bad_update_keeps_the_last_factors():
    vm = lpt_vm(25_000_000)
    mem, ipa = vm.machine.vm.memory, vm.machine.vm.lpt.ipa
    mem.write(ipa + LPT_SEQUENCE_OFFSET, (3).to_bytes(8, "little"))
    vm.guest(1_000 * US, lambda cpu: vm.clock.read(cpu))
    assert vm.clock.stats.retries > 0
    mem.write(ipa + LPT_SEQUENCE_OFFSET, (4).to_bytes(8, "little"))
    mem.write(ipa + 20, (7).to_bytes(4, "little"))  # pv_freq changed: refused
    assert vm.pv(2_000 * US) == 2_000_000
    assert vm.clock.stats.bad_records >= 1


@pytest.mark.parametrize("native,pv,shift", [(25_000_000, 10**9, -5), (10**9, 25_000_000, 5),
                                             (24_000_000, 24_000_000, 0), (10**9, 1, 30)])
def test_event_stream_divider_moves_by_the_nearest_power_of_two(native, pv, shift):
    sf = fixedpoint.scale_factors(native, pv)
    assert fixedpoint.evnti_shift(sf) == shift
    for evnti in range(16):
        assert fixedpoint.translate_evnti(evnti, sf) == min(15, max(0, evnti + fixedpoint.evnti_shift(sf)))


def test_event_stream_programmed_and_retranslated_after_migration():
    from tests.lpt.harness import migrate
    vm = lpt_vm(25_000_000)
    evnti = linux_evnti(10**9)
    native = vm.guest(0, lambda cpu: vm.clock.set_event_stream(cpu, 0, evnti))
    assert native == evnti - 5 and (vm.guest(0, lambda cpu: cpu.mrs(CNTKCTL_EL1)) >> 4) & 0xF == native
    moved = migrate(vm, 1_000_000_000, 1_000 * US, 1_000 * US)
    moved.pv(2_000 * US)
    moved.guest(2_000 * US, lambda cpu: moved.clock.refresh(cpu, 0))
    assert (moved.guest(2_000 * US, lambda cpu: cpu.mrs(CNTKCTL_EL1)) >> 4) & 0xF == evnti  # 1 GHz: no shift


def test_el0_counter_reads_trap_under_lpt_and_go_direct_without():
    vm = lpt_vm(25_000_000)
    vm.guest(0, lambda cpu: vm.clock.cpu_init(cpu))
    assert vm.guest(1_000 * US, lambda cpu: el0_mrs(cpu, vm.clock, CNTVCT_EL0)) == 1_000_000  # PV
    plain = boot(25_000_000, None)
    clock = plain.guest(0, lambda cpu: ArchCounter(cpu))
    plain.guest(0, lambda cpu: clock.cpu_init(cpu))
    assert plain.guest(1_000 * US, lambda cpu: el0_mrs(cpu, clock, CNTVCT_EL0)) == 25_000  # raw
    assert plain.guest(1_000 * US, lambda cpu: el0_mrs(cpu, clock, CNTFRQ_EL0)) == 25_000_000


def test_lpt_unaware_guest_sees_the_native_frequency():
    vm = boot(25_000_000, 10**9)  # LPT configured, but the guest does not probe it
    clock = vm.guest(0, lambda cpu: ArchCounter(cpu))
    assert clock.freq == 25_000_000
    assert vm.guest(1_000 * US, lambda cpu: clock.read(cpu)) == 25_000
    assert vm.guest(1_000 * US, lambda cpu: cpu.mrs(CNTV_CVAL_EL0)) == 0
