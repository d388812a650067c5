"""The PV counter across migrations between hosts of different native frequencies (docs/semantics.md section 5)."""

import random
from fractions import Fraction

import pytest

from pvtime import fixedpoint
from pvtime.abi.sysregs import CNTP_CTL_EL0, CNTPCT_EL0, CNTV_CTL_EL0, CNTVCT_EL0, CTL_ENABLE
from pvtime.kvm import Quirk
from tests.lpt.harness import NS, boot, migrate

FREQS = [24_000_000, 25_000_000, 100_000_000, 1_000_000_000]
US = 1_000  # every host counter ticks exactly on a microsecond boundary at these frequencies


def ideal(t: int, pv: int) -> Fraction:
    return Fraction(t * pv, NS)


@pytest.mark.parametrize("pv", [1_000_000, 24_000_000, 1_000_000_000])
def test_pv_counter_continuous_across_n_migrations(pv):
    """Error against ideal time <= 1 PV tick per migration (+1 for the read's own truncation),
    on the microsecond grid where every counter is exact; monotonic at random times too.

    When a PV tick is finer than the destination's native tick (pv > f_dst), the unit is that
    native tick instead: the guest cannot see finer, and keeping the PV counter monotonic can
    require rounding the rescaled counter up by one native tick."""
    rng = random.Random(pv)
    vm = boot(FREQS[0], pv)
    t, bound, native = 0, 1, FREQS[0]
    for hop in range(12):
        for _ in range(20):  # reads on this host, at grid instants and in between
            t += rng.randrange(1, 500) * US
            value = vm.pv(t)
            assert abs(value - ideal(t, pv)) <= bound, (hop, native, t, value, float(ideal(t, pv)))
            vm.pv(t + rng.randrange(1, 999))  # off-grid: monotonicity only (below)
        t_save = t + 3 * US
        t_restore = t_save + rng.randrange(0, 3000) * US
        native = FREQS[(FREQS.index(native) + 1 + rng.randrange(3)) % 4]
        vm = migrate(vm, native, t_save, t_restore)
        bound += max(1, -(-pv // native))
        if pv <= min(FREQS):
            assert bound == 2 + hop  # the plain "1 PV tick per migration"
        t = t_restore
    values = [v for _, v in sorted(vm.reads)]
    assert values == sorted(values), "the PV counter stepped backwards"


def test_the_rescale_is_exact_at_first_run_whenever_it_happens():
    # The rescale maps the restored counter at the instant the VMM wrote it, so a first run
    # long after the restore does not scale the ticks counted at the new rate in between.
    pv = 100_000_000
    vm = boot(25_000_000, pv)
    vm.pv(1_000 * US)
    vm.machine.pause()
    from pvtime.vmm.migration import ModelHandover, restore, save
    from pvtime.host import Host
    from pvtime.kvm import Kvm
    from tests.conftest import ScriptCpu
    from tests.lpt.harness import Vm
    data = save(vm.machine, now_ns=2_000 * US, handover=ModelHandover())
    host = Host(1_000_000_000)
    machine = restore(Kvm(host), data, now_ns=2_000 * US, downtime_ns=0, cpus=ScriptCpu)
    late = Vm(host, machine, host.spawn("vcpu"))
    late.run(50_000 * US)  # first run 48 ms after the restore
    assert late.pv(60_000 * US) == ideal(60_000 * US, pv)


def test_physical_counter_continuous_too():
    pv = 1_000_000_000
    vm = boot(25_000_000, pv)
    before = vm.pv(10_000 * US, physical=True)
    vm = migrate(vm, 100_000_000, 10_000 * US, 10_500 * US)
    after = vm.pv(11_000 * US, physical=True)
    assert after - before == pytest.approx(1_000 * US * pv // NS, abs=2)


def test_rfc_defect_only_the_virtual_counter_rescaled_makes_the_physical_one_jump():
    pv = 1_000_000_000
    vm = boot(25_000_000, pv, quirks=Quirk.LPT_VTIMER_ONLY)
    before = vm.pv(10_000 * US, physical=True)
    vm = migrate(vm, 100_000_000, 10_000 * US, 10_500 * US)
    after = vm.pv(11_000 * US, physical=True)
    assert after - before < 0  # PV of CNTPCT: old-tick value seen through 4x smaller factors


def arm(vm, t, pv_deadline, physical):
    ctl = CNTP_CTL_EL0 if physical else CNTV_CTL_EL0

    def program(cpu):
        vm.clock.set_cval(cpu, pv_deadline, physical)
        cpu.msr(ctl, CTL_ENABLE)
    vm.guest(t, program)


def fires_at(vm, physical):
    """The virtual time the timer's interrupt asserts (host view)."""
    return vm.fires_at(physical)


@pytest.mark.parametrize("physical", [False, True])
@pytest.mark.parametrize("src,dst", [(25_000_000, 1_000_000_000), (1_000_000_000, 24_000_000),
                                     (24_000_000, 25_000_000)])
def test_pending_timers_rescaled_never_early(src, dst, physical):
    pv = 1_000_000_000
    vm = boot(src, pv)
    vm.pv(1_000 * US, physical)
    deadlines = [vm.pv(1_000 * US, physical) + d for d in (5_000_000, 7 * 2**32)]  # 5 ms, and > 2^32 ticks
    results = []
    for deadline in deadlines:
        arm(vm, 1_000 * US, deadline, physical)
        moved = migrate(vm, dst, 2_000 * US, 2_000 * US)
        t_fire = fires_at(moved, physical)
        assert moved.pv(t_fire, physical) >= deadline  # never early
        assert moved.pv(t_fire, physical) - deadline <= max(1, pv // dst) + 1  # and not late
        results.append(t_fire)
        vm = moved
    assert results[1] > 7 * 2**32 // (pv // NS or 1)


def test_rfc_defect_u32_pending_delta_mangles_long_and_expired_timers():
    pv = 1_000_000_000
    for quirks, mangled in ((Quirk.NONE, False), (Quirk.LPT_U32_PENDING_DELTA, True)):
        vm = boot(1_000_000_000, pv, quirks=quirks)
        far = vm.pv(1_000 * US) + 2**33  # 8.6 s ahead: 2^33 native ticks at 1 GHz
        arm(vm, 1_000 * US, far, physical=False)
        moved = migrate(vm, 25_000_000, 2_000 * US, 2_000 * US)
        early = moved.pv(fires_at(moved, False)) < far
        assert early is mangled


@pytest.mark.parametrize("quirks", [Quirk.NONE, Quirk.LPT_U32_PENDING_DELTA])
def test_expired_timers_stay_expired(quirks):
    vm = boot(25_000_000, 1_000_000_000, quirks=quirks)
    past = vm.pv(5_000 * US) - 1_000_000
    arm(vm, 5_000 * US, past, physical=False)
    assert vm.irq_pending()
    moved = migrate(vm, 1_000_000_000, 6_000 * US, 6_000 * US)
    with moved.host.on_cpu(moved.task, 0, start_ns=6_000 * US):
        pending = moved.irq_pending()
    assert pending is (quirks == Quirk.NONE)  # the RFC's u32 delta makes it 4.3 s away


def test_rfc_defect_truncating_reverse_conversion_fires_early():
    # For 24 MHz native / 1 GHz PV the RFC's pv_to_native can be early; the deadline one never is.
    sf = fixedpoint.scale_factors(24_000_000, 1_000_000_000)
    rng = random.Random(5)
    early = 0
    for _ in range(2000):
        d = rng.randrange(1, 1 << 50)
        assert fixedpoint.native_to_pv(fixedpoint.pv_to_native_deadline(d, sf), sf) >= d
        early += fixedpoint.native_to_pv(fixedpoint.pv_to_native(d, sf), sf) < d
    assert early > 0


def test_lpt_unaware_vm_counter_changes_rate_across_migration():
    # No LPT: no rescale. The counter keeps counting at the new host's rate while a guest that
    # read CNTFRQ at boot still divides by the old frequency (docs/semantics.md section 5).
    vm = boot(25_000_000, None)
    f0 = vm.guest(1_000 * US, lambda cpu: cpu.mrs(__import__("pvtime.abi.sysregs", fromlist=["x"]).CNTFRQ_EL0))
    c0 = vm.guest(1_000 * US, lambda cpu: cpu.mrs(CNTVCT_EL0))
    moved = migrate(vm, 100_000_000, 1_000 * US, 1_000 * US)
    c1 = moved.guest(2_000 * US, lambda cpu: cpu.mrs(CNTVCT_EL0))
    assert f0 == 25_000_000
    assert (c1 - c0) == 100_000  # 1 ms at 100 MHz: read with the boot CNTFRQ, that is 4 ms
    assert moved.guest(2_000 * US, lambda cpu: cpu.mrs(CNTPCT_EL0)) >= c1
