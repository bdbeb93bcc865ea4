"""A simulated network: every send becomes a future delivery event, or nothing.

Latency, loss, duplication, reordering and partitions are decided at send time from the
simulation's single RNG, so the same seed gives the same deliveries. Partitions are sets of
cut directed links, so one-way (asymmetric) partitions are as easy as symmetric ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from spindle.sim.faults import FaultConfig
from spindle.sim.scheduler import Scheduler, Trace

__all__ = ["Address", "SimNetwork"]

Address = int
Handler = Callable[[Address, object], None]


class SimNetwork:
    """Delivers opaque payloads between registered addresses (replicas and clients)."""

    def __init__(
        self, scheduler: Scheduler, rng: random.Random, faults: FaultConfig, trace: Trace
    ) -> None:
        self._scheduler = scheduler
        self._rng = rng
        self._faults = faults
        self._trace = trace
        self._handlers: dict[Address, Handler] = {}
        self._cut_links: set[tuple[Address, Address]] = set()
        #: While False (the quiet phase at the end of a run) no random loss/dup/reorder.
        self.chaos = True
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    def register(self, address: Address, handler: Handler) -> None:
        self._handlers[address] = handler

    def unregister(self, address: Address) -> None:
        """A crashed endpoint: messages in flight to it are dropped on arrival."""
        self._handlers.pop(address, None)

    # -- partitions --------------------------------------------------------------------------

    def cut(self, src: Address, dst: Address) -> None:
        self._cut_links.add((src, dst))

    def partition(
        self, side_a: Iterable[Address], side_b: Iterable[Address], *, one_way: bool
    ) -> None:
        """Cuts a->b links, and b->a too unless ``one_way``."""
        side_b = list(side_b)
        for a in side_a:
            for b in side_b:
                self._cut_links.add((a, b))
                if not one_way:
                    self._cut_links.add((b, a))

    def heal(self) -> None:
        self._cut_links.clear()

    def is_cut(self, src: Address, dst: Address) -> bool:
        return (src, dst) in self._cut_links

    def cut_links(self) -> list[tuple[Address, Address]]:
        return sorted(self._cut_links)

    # -- sending -----------------------------------------------------------------------------

    def send(self, src: Address, dst: Address, payload: object, label: object) -> None:
        """Schedules delivery of ``payload`` (``label`` names it in the trace)."""
        self.sent += 1
        faults, rng, now_us = self._faults, self._rng, self._scheduler.now_us
        if (src, dst) in self._cut_links:
            self.dropped += 1
            self._trace.log(now_us, "net   %d->%d cut: %s", src, dst, label)
            return
        chaos = self.chaos
        if chaos and faults.on("loss") and rng.random() < faults.loss_probability:
            self.dropped += 1
            self._trace.log(now_us, "net   %d->%d lost: %s", src, dst, label)
            return
        copies = 1
        if chaos and faults.on("duplicate") and rng.random() < faults.duplicate_probability:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            delay_us = faults.base_delay_us
            if chaos and faults.on("delay"):
                delay_us += rng.randint(0, faults.max_jitter_us)
            if chaos and faults.on("reorder") and rng.random() < faults.reorder_probability:
                delay_us += rng.randint(
                    faults.reorder_delay_us_max // 4, faults.reorder_delay_us_max
                )
            self._scheduler.after(delay_us, lambda: self._deliver(src, dst, payload, label))

    def _deliver(self, src: Address, dst: Address, payload: object, label: object) -> None:
        handler = self._handlers.get(dst)
        if handler is None:
            self._trace.log(
                self._scheduler.now_us, "net   %d->%d to down node: %s", src, dst, label
            )
            return
        handler(src, payload)
