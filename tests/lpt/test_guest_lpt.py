"""The guest's LPT clocksource: probe, PV frequency, timers, sequence retry loop, event stream, EL0."""

import pytest

from pvtime import fixedpoint
from pvtime.abi import smccc
from pvtime.abi.records import LPT_SEQUENCE_OFFSET, LptRecord
from pvtime.abi.sysregs import CNTFRQ_EL0, CNTKCTL_EL1, CNTV_CVAL_EL0, CNTVCT_EL0
from pvtime.abi.uapi import KVM_REG_ARM_TIMER_CVAL
from pvtime.guest.lpt import ArchCounter, LptClock, el0_mrs, linux_evnti
from pvtime.guest.paravirt import has_pv_steal_clock
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
    vm.write(vm.lpt_ipa(), (1).to_bytes(4, "little"))  # revision 1
    messages = []
    assert vm.guest(0, lambda cpu: LptClock.probe(cpu, messages)) is None
    assert "revision" in messages[0]


class Calls:
    """A GuestCpu recording each hypercall's x0 and x1."""

    def __init__(self, cpu):
        self.cpu, self.calls = cpu, []

    def __getattr__(self, name):
        return getattr(self.cpu, name)

    def hvc(self, x0, x1=0, x2=0, x3=0, *, imm=0):
        self.calls.append((x0, x1))
        return self.cpu.hvc(x0, x1, x2, x3, imm=imm)


def test_lpt_probe_is_the_stolen_time_probe_with_pv_time_lpt():
    def probe(cpu):
        st, lpt = Calls(cpu), Calls(cpu)
        assert has_pv_steal_clock(st) and LptClock.probe(lpt, []) is not None
        return st.calls, lpt.calls

    st, lpt = boot(25_000_000, 10**9).guest(0, probe)
    # psci_init_smccc, then ARCH_FEATURES(PV_TIME_FEATURES), then PV_TIME_FEATURES(the call).
    smccc_1_1 = [(smccc.PSCI_FEATURES, smccc.SMCCC_VERSION), (smccc.SMCCC_VERSION, 0),
                 (smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES)]
    assert st == [*smccc_1_1, (smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST)]
    assert lpt == [*smccc_1_1, (smccc.PV_TIME_FEATURES, smccc.PV_TIME_LPT), (smccc.PV_TIME_LPT, 0)]


def test_timer_programmed_through_the_deadline_conversion():
    vm = lpt_vm(24_000_000)
    sf = vm.clock.factors
    for deadline in (1, 41, 42, 10**9 + 7):
        vm.guest(0, lambda cpu, deadline=deadline: vm.clock.set_cval(cpu, deadline))
        native = vm.machine.vcpus[0].get_one_reg(KVM_REG_ARM_TIMER_CVAL)
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
    """A GuestCpu whose host migrates (new factors, sequence + 2) right after a counter read,
    `times` times; the record's native frequency cycles through `natives`."""

    def __init__(self, cpu, vm, times=1, natives=(100_000_000,)):
        self.cpu, self.vm, self.times, self.natives = cpu, vm, times, natives
        self.moves = 0

    def __getattr__(self, name):
        return getattr(self.cpu, name)

    def mrs(self, reg):
        value = self.cpu.mrs(reg)
        if reg == CNTVCT_EL0 and self.times:
            self.times -= 1
            ipa = self.vm.lpt_ipa()
            old = LptRecord.unpack(self.vm.machine.read_guest(ipa, 48))
            native = self.natives[self.moves % len(self.natives)]
            self.moves += 1
            new = LptRecord(sequence_number=old.sequence_number + 2,
                            **fixedpoint.scale_factors(native, old.pv_freq).record_fields())
            self.vm.write(ipa, new.pack())
        return value


def test_sequence_retry_loop_rereads_after_a_concurrent_update():
    vm = lpt_vm(25_000_000)
    value = vm.guest(1_000 * US, lambda cpu: vm.clock.read(Racing(cpu, vm)))
    assert vm.clock.stats.retries == 1 and vm.clock.stats.refreshes == 1
    # The retry used the new factors with a fresh counter read (host counter: 25 MHz, record
    # says 100 MHz here since only the record was changed): 25 000 ticks at 100 MHz -> 250 000.
    assert value == 250_000


def test_a_sequence_that_keeps_moving_is_retried_until_consistent_never_torn():
    # As the RFC's loop (and every Linux seqcount reader), the guest does not give up: 100
    # migrations in a row, each between its counter read and its re-read of the sequence.
    vm = lpt_vm(25_000_000)
    natives = (100_000_000, 50_000_000)
    value = vm.guest(1_000 * US, lambda cpu: vm.clock.read(Racing(cpu, vm, times=100, natives=natives)))
    assert vm.clock.stats.retries == 100 and vm.clock.stats.refreshes == 100
    # Read with the factors of the record the host left: 25 000 native ticks at 50 MHz.
    assert value == 500_000


class HostMidUpdate:
    """A GuestCpu whose record's sequence reads odd (an update in progress) `times` times, after
    which the host finishes it: the sequence becomes `done`."""

    def __init__(self, cpu, vm, times, done):
        self.cpu, self.vm, self.times, self.done = cpu, vm, times, done

    def __getattr__(self, name):
        return getattr(self.cpu, name)

    def load64(self, addr):
        value = self.cpu.load64(addr)
        ipa = self.vm.lpt_ipa()
        if addr == ipa + LPT_SEQUENCE_OFFSET and self.times:
            self.times -= 1
            if not self.times:
                self.vm.write(ipa + LPT_SEQUENCE_OFFSET, self.done.to_bytes(8, "little"))
        return value


def test_odd_sequence_is_retried_and_a_bad_update_keeps_the_last_factors():
    vm = lpt_vm(25_000_000)
    ipa = vm.lpt_ipa()
    vm.write(ipa + LPT_SEQUENCE_OFFSET, (3).to_bytes(8, "little"))
    value = vm.guest(1_000 * US, lambda cpu: vm.clock.read(HostMidUpdate(cpu, vm, times=100, done=4)))
    assert vm.clock.stats.retries == 100 and vm.clock.stats.refreshes == 1 and value == 1_000_000
    vm.write(ipa + LPT_SEQUENCE_OFFSET, (6).to_bytes(8, "little"))
    vm.write(ipa + 20, (7).to_bytes(4, "little"))  # pv_freq changed: refused
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


def test_a_record_that_never_settles_panics_the_guest_not_the_host():
    """A seqcount reader spins until the sequence is even and steady (Linux would spin for ever
    on a corrupted record); the model kernel gives up after MAX_SPINS reads at one instant with
    GuestPanic, which the CPU backend turns into a fault of this VM alone."""
    from pvtime.guest.lpt import MAX_SPINS
    from pvtime.guest.machine import GuestPanic

    vm = lpt_vm(25_000_000)
    vm.write(vm.lpt_ipa() + LPT_SEQUENCE_OFFSET, (5).to_bytes(8, "little"))  # odd for good
    with pytest.raises(GuestPanic, match="not settled"):
        vm.guest(1_000 * US, lambda cpu: vm.clock.read(cpu))
    assert vm.clock.stats.retries == MAX_SPINS
