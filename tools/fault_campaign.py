"""pvtime's fault campaign: the fault tests' property checks (tests/fault/), explored at random.

The test suite runs each check on a fixed, derandomized set of examples; this script runs the same
checks with fresh random examples for as long as it is given, across four areas:

- calls:      random sequences of KVM userspace calls (tests/fault/test_fault_uapi.py);
- hypercalls: random HVC/SMC calls from model guests and AArch64 code beside a second VM
              (tests/fault/test_fault_hypercalls.py);
- streams:    corrupted live-migration streams (tests/fault/test_fault_streams.py, or, without
              it, a corruption loop over pvtime.vmm.migration's save/restore);
- files:      mutated scenario files (tests/fault/test_fault_scenarios.py).

It prints its counts and every finding with a reproducer (hypothesis's falsifying example and
its @reproduce_failure blob). Usage, from the repository root:

    .venv/bin/python tools/fault_campaign.py --minutes 10
    .venv/bin/python tools/fault_campaign.py --calls 2000 --hypercalls 300 --streams 50 --files 2000

With --minutes the time is shared equally by the areas; with counts, each area runs that many
examples (sequences, programs, streams, files). --seed makes a campaign repeatable.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402 -- pytest.fail is how a check says "finding"
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fault import test_fault_hypercalls as hypercalls  # noqa: E402
from tests.fault import test_fault_scenarios as scenarios  # noqa: E402
from tests.fault import test_fault_uapi as uapi  # noqa: E402
from tests.fault.tally import TALLY  # noqa: E402

Check = Callable[[], None]


@dataclass
class Area:
    """One kind of fault: its checks, each a hypothesis test of `chunk` examples."""

    name: str
    unit: str  # what one example is
    checks: list[tuple[Callable[[int], Check], int]]  # (make a test of n examples, n per chunk)
    examples: int = 0
    seconds: float = 0.0
    note: str = ""


@dataclass
class Finding:
    """A distinct failure, with how to reproduce it."""

    area: str
    error: str
    reproducer: str
    count: int = 1
    first_seen_s: float = 0.0


@dataclass
class Campaign:
    """The running totals."""

    base_seed: int
    areas: list[Area]
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    chunks: int = 0
    start: float = field(default_factory=time.monotonic)


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=False, database=None, deadline=None, print_blob=True,
                    phases=(Phase.generate, Phase.shrink),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _test(strategies: tuple[st.SearchStrategy[Any], ...], check: Callable[..., object]) -> Callable[[int], Check]:
    @functools.wraps(check)
    def returning_none(*args: Any, **kwargs: Any) -> None:  # a check may say what happened; a test returns None
        check(*args, **kwargs)

    def make(examples: int) -> Check:
        return _settings(examples)(given(*strategies)(returning_none))
    return make


def areas() -> list[Area]:
    """The four areas, with the checks of tests/fault/ (streams: theirs if present)."""
    hyper_model = (st.booleans(), st.booleans(), st.sampled_from([False, False, True]), st.integers(0, 1 << 32),
                   st.lists(hypercalls.calls(2), min_size=1, max_size=25))
    hyper_a64 = (*hyper_model[:4], st.lists(hypercalls.calls(1), min_size=1, max_size=12))
    streams, note = _stream_checks()
    return [
        Area("calls", "call sequences", [(_test((uapi.WORLDS, uapi.SEQUENCES), uapi.check_sequence), 100)]),
        Area("hypercalls", "guest programs", [(_test(hyper_model, hypercalls.check_model_calls), 40),
                                             (_test(hyper_a64, hypercalls.check_unicorn_calls), 10)]),
        Area("streams", "streams", streams, note=note),
        Area("files", "scenario files", [(_test((st.sampled_from(sorted(scenarios.BASES)), scenarios.MUTATIONS),
                                                timed_check_file), 100)]),
    ]


SLOW: list[tuple[str, str]] = []  # (error, reproducer) of runs far slower than their estimate


def timed_check_file(base: str, mutations: list[tuple[object, ...]]) -> str:
    """scenarios.check_file, and a note when a run takes ten times its estimate (and 5 s or more):
    `pvtime run`'s cost estimate (issue 10, finding 13) must not be fooled by a file. A note, not
    a failure: a wall-clock figure never fails a check (shrinking would re-run it)."""
    t0 = time.monotonic()
    outcome = scenarios.check_file(base, mutations)
    took = time.monotonic() - t0
    if outcome == "ran" and took > 5:
        from pvtime.sim import scenario
        from pvtime.sim.cost import estimate_seconds

        spec = scenario.parse(scenarios.mutate(scenarios.BASES[base], mutations)).spec
        estimate = estimate_seconds(spec.model_copy(update={"duration_ms": min(spec.duration_ms, scenarios.RUN_MS)}))
        if took > 10 * estimate:
            SLOW.append((f"SlowRun: a {scenarios.RUN_MS} ms run took {took:.1f} s, estimated {estimate:.2f} s",
                         f"check_file(base={base!r}, mutations={mutations!r})"))
    return outcome


def _stream_checks() -> tuple[list[tuple[Callable[[int], Check], int]], str]:
    try:
        from tests.fault import test_fault_streams as streams
    except ImportError as err:
        return [(_test((st.integers(0, 1 << 30), st.integers(1, 8)), corrupt_and_restore), 20)], \
            f"tests/fault/test_fault_streams.py unavailable ({err}): a simple corruption loop"
    plans = st.one_of(streams.flipped(), streams.truncated(), streams.spliced(), streams.reordered(),
                      streams.repeated(), streams.dropped(), streams.forged())

    def check_stream_plan(plan: Any) -> None:
        streams.check_stream(*plan)
    return [(_test((plans,), check_stream_plan), 50)], "tests/fault/test_fault_streams.py's plans"


def corrupt_and_restore(position: int, flips: int) -> None:
    """The fallback stream check: a snapshot with `flips` bytes changed from `position` on is
    refused with a MigrationError, and the destination keeps no VM."""
    from pvtime.host import Host
    from pvtime.kvm import Kvm
    from pvtime.vmm import Machine, MachineConfig
    from pvtime.vmm.migration import MigrationError, restore, save

    TALLY["streams"] += 1
    source = Machine(Kvm(Host(25_000_000)), MachineConfig("s", memory_mib=1, lpt_pv_hz=10**9))
    stream = bytearray(save(source, now_ns=0))
    for k in range(flips):
        stream[(position + 7919 * k) % len(stream)] ^= 0x5A
    dest = Kvm(Host(10**9))
    try:
        restore(dest, bytes(stream), now_ns=0)
    except MigrationError:
        pass
    else:
        pytest.fail("a corrupted stream was accepted")
    probe = dest.create_vm()
    assert probe.name == "vm0", "a refused stream left a VM behind"


# --- running -------------------------------------------------------------------------------------------

def run_chunk(campaign: Campaign, area: Area) -> None:
    """One chunk of every check of `area`, each with a fresh seed; failures become findings."""
    for make, n in area.checks:
        test = seed(campaign.base_seed * 1_000_003 + campaign.chunks)(make(n))
        campaign.chunks += 1
        t0 = time.monotonic()
        try:
            test()
        except (Exception, pytest.fail.Exception) as err:  # a finding, whatever it is
            record(campaign, area.name, err)
        finally:
            area.seconds += time.monotonic() - t0
            area.examples += n
        while SLOW:
            error, reproducer = SLOW.pop()
            note(campaign, area.name, error, reproducer)


def record(campaign: Campaign, area: str, err: BaseException) -> None:
    errors = list(err.exceptions) if isinstance(err, BaseExceptionGroup) else [err]
    for e in errors:
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        notes = [n for n in getattr(e, "__notes__", []) if n.strip()]
        note(campaign, area, f"{type(e).__name__}: {message}"[:400], "\n".join(notes) or "(no falsifying example)")


def note(campaign: Campaign, area: str, error: str, reproducer: str) -> None:
    """Count a finding; print it the first time (findings differing only in numbers are one)."""
    key = (area, re.sub(r"0x[0-9a-f]+|\d+(\.\d+)?", "N", error)[:160])
    if key in campaign.findings:
        campaign.findings[key].count += 1
    else:
        campaign.findings[key] = Finding(area, error, reproducer, 1, time.monotonic() - campaign.start)
        print(f"\nFINDING in {area}: {error}\n{reproducer}\n", flush=True)


def counts() -> dict[str, int]:
    return {"calls": TALLY["calls"], "hypercalls": TALLY["hypercalls"], "streams": TALLY["streams"],
            "files": TALLY["files"], "scenario runs": TALLY["runs"]}


def report(campaign: Campaign) -> dict[str, Any]:
    elapsed = time.monotonic() - campaign.start
    out: dict[str, Any] = {
        "seed": campaign.base_seed, "minutes": round(elapsed / 60, 2), "counts": counts(),
        "areas": {a.name: {"examples": a.examples, "unit": a.unit, "seconds": round(a.seconds, 1), "note": a.note}
                  for a in campaign.areas},
        "findings": [vars(f) for f in campaign.findings.values()],
    }
    print(f"\nfault campaign: {elapsed / 60:.1f} min, seed {campaign.base_seed}")
    for a in campaign.areas:
        print(f"  {a.name:<11} {a.examples:>7} {a.unit:<15} {a.seconds:7.0f} s" + (f"  ({a.note})" if a.note else ""))
    c = out["counts"]
    print(f"  counts: calls {c['calls']}, hypercalls {c['hypercalls']}, streams {c['streams']}, "
          f"files {c['files']} (runs {c['scenario runs']}), findings {len(campaign.findings)}")
    for f in campaign.findings.values():
        print(f"\n  [{f.area}] x{f.count} {f.error}\n    " + f.reproducer.replace("\n", "\n    "))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, help="total wall-clock budget, shared by the areas")
    for name in ("calls", "hypercalls", "streams", "files"):
        parser.add_argument(f"--{name}", type=int, metavar="N", help=f"examples of the {name} area")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="base seed (default: the clock)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    campaign = Campaign(args.seed, areas())
    wanted = {a.name: getattr(args, a.name) for a in campaign.areas}
    if args.minutes is None and all(v is None for v in wanted.values()):
        args.minutes = 1.0
    if args.minutes is not None:
        deadline = campaign.start + 60 * args.minutes
        while time.monotonic() < deadline:
            run_chunk(campaign, min(campaign.areas, key=lambda a: a.seconds))
    else:
        for area in campaign.areas:
            target = wanted[area.name] or 0
            while area.examples < target:
                run_chunk(campaign, area)
    out = report(campaign)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 1 if campaign.findings else 0


if __name__ == "__main__":
    sys.exit(main())
