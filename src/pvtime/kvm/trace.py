"""KVM's hypercall tracepoint (as kvm_hvc_arm64 / trace_kvm_smccc): typed events for observers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HypercallEvent:
    """One SMCCC call, published after KVM served it."""

    vcpu_id: int
    function_id: int  # x0 at the call, truncated to 32 bits (the SMCCC function id)
    args: tuple[int, int, int, int]  # x0..x3 at the call
    results: tuple[int, int, int, int]  # x0..x3 as returned to the guest
    # PV_TIME_ST zeroed the vCPU's stolen-time record and moved KVM's baseline (last_steal) to
    # its thread's run_delay now: the record counts steal from this call on.
    baseline_reset: bool = False


HypercallObserver = Callable[[HypercallEvent], None]


class HypercallTracepoint:
    """The observers of one VM's hypercalls, called in the order they subscribed.

    Observers see the calls and must not change state.
    """

    def __init__(self) -> None:
        self._observers: tuple[HypercallObserver, ...] = ()

    def __bool__(self) -> bool:
        return bool(self._observers)

    def subscribe(self, observer: HypercallObserver) -> None:
        """Add `observer`; ValueError if it is subscribed already (as tracepoint_probe_register's
        EEXIST)."""
        if observer in self._observers:
            raise ValueError(f"{observer!r} is already subscribed to this tracepoint")
        self._observers += (observer,)

    def unsubscribe(self, observer: HypercallObserver) -> None:
        """Remove `observer`; ValueError if it is not subscribed (tracepoint_probe_unregister's ENOENT)."""
        if observer not in self._observers:
            raise ValueError(f"{observer!r} is not subscribed to this tracepoint")
        self._observers = tuple(o for o in self._observers if o != observer)

    def publish(self, event: HypercallEvent) -> None:
        """Call every observer with `event`."""
        for observer in self._observers:
            observer(event)
