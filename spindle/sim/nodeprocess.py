"""One simulated machine running a real Spindle node: its disk, its clock, its process.

The process is the production ``Node`` (spindle/kv/node.py) with simulated I/O: its event
loop is a ``SimEventLoop`` (virtual time, fsyncs that take simulated time), its engine a
``SimDisk`` handle, its transport a ``SimTransport``. A crash kills the loop (nothing the
process had pending ever runs) and cuts power to the disk; a restart is a fresh ``Node``
over the same disk, exactly as a restarted server would be. A pause stops the loop while
its clock runs on. The machine's clock may run fast or slow and starts at its own offset.

``Node`` builds its ``RaftHost`` itself and gives it no seed, so the simulator swaps the
class ``spindle.kv.node`` uses for ``ObservedRaftHost`` (seeded, reporting to the
invariant ledgers) while it constructs the node.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import spindle.kv.node as node_module
from spindle.kv import protocol as p
from spindle.kv.errors import SpindleError
from spindle.kv.groupcommit import GroupCommitter
from spindle.kv.node import Node
from spindle.sim.aioloop import LoopDriver, SimEventLoop
from spindle.sim.nodedisk import ProcessEngine, SimDisk
from spindle.sim.nodenet import Endpoint, SimTransport, SimWire
from spindle.sim.raftobserver import ObservedRaftHost, RaftObserver
from spindle.sim.scheduler import Trace

__all__ = ["NodeProcess", "ProcessSettings"]

#: Wall-clock milliseconds at simulated time zero (any fixed value: runs must not depend on
#: the real date).
WALL_CLOCK_EPOCH_MS = 1_800_000_000_000
CLUSTER_SECRET = "simulated-cluster-secret"


class ProcessSettings:
    """What stays the same across a machine's restarts."""

    def __init__(
        self,
        node_id: int,
        cluster_size: int,
        *,
        drift_ppm: int = 0,
        skew_s: float = 0.0,
        wall_skew_ms: int = 0,
        log_compact_entries: int = 0,
        log_keep_entries: int = 0,
        meta_founders: tuple[int, ...] = (),
    ) -> None:
        self.node_id = node_id
        self.host = f"10.0.0.{node_id}"
        self.port = 7000 + node_id
        self.cluster_size = cluster_size
        self.drift_ppm = drift_ppm
        self.skew_s = skew_s
        self.wall_skew_ms = wall_skew_ms
        self.log_compact_entries = log_compact_entries
        self.log_keep_entries = log_keep_entries
        self.meta_founders = meta_founders


@contextlib.contextmanager
def _observed_raft_host(
    observer: RaftObserver, seed: int, meta_founders: tuple[int, ...]
) -> Iterator[None]:
    def build(*args: Any, **kwargs: Any) -> ObservedRaftHost:
        kwargs["seed"] = seed
        return ObservedRaftHost(*args, observer=observer, meta_founders=meta_founders, **kwargs)

    with mock.patch.object(node_module, "RaftHost", build):
        yield


class NodeProcess:
    """A machine: disk and clock for good, a node process while it is up."""

    def __init__(
        self,
        settings: ProcessSettings,
        *,
        driver: LoopDriver,
        wire: SimWire,
        observer: RaftObserver,
        trace: Trace,
        rng: random.Random,
        fsync_s: Callable[[], float],
        join: tuple[str, int] | None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.driver = driver
        self.wire = wire
        self.observer = observer
        self.trace = trace
        self.rng = rng
        self.fsync_s = fsync_s
        self.join = join
        self.disk = SimDisk(settings.node_id)
        self.incarnation = 0
        self.node: Node | None = None
        self.loop: SimEventLoop | None = None
        self._engine: ProcessEngine | None = None
        self.endpoint: Endpoint | None = None
        self.started = False
        self.start_failures = 0
        self.crashes = 0
        self._pause_token = 0
        #: Loops of dead incarnations, kept so their coroutines are not finalized mid-run.
        self.graveyard: list[SimEventLoop] = []
        #: Unexpected exceptions asyncio reported in this machine's loops.
        self.loop_errors: list[str] = []
        wire.addresses[(settings.host, settings.port)] = settings.node_id

    @property
    def up(self) -> bool:
        return self.node is not None

    def now_us(self) -> int:
        return self.driver.now_us

    # -- lifecycle ---------------------------------------------------------------------------

    def boot(self) -> None:
        """Start a new incarnation of the node process over the machine's disk."""
        assert self.node is None, "already running"
        settings = self.settings
        self.incarnation += 1
        loop = self.driver.new_loop(
            f"n{self.node_id}.{self.incarnation}",
            drift_ppm=settings.drift_ppm,
            skew_s=settings.skew_s,
            executor_delay_s=self.fsync_s,
        )
        loop.set_exception_handler(self._loop_exception)
        engine = self.disk.handle()
        wall_offset_ms = WALL_CLOCK_EPOCH_MS + settings.wall_skew_ms

        def clock_ms() -> int:
            return int(loop.time() * 1000) + wall_offset_ms

        endpoint = Endpoint(self.node_id, loop, self.incarnation)
        seed = self.rng.getrandbits(64)
        with _observed_raft_host(self.observer, seed, settings.meta_founders):
            node = Node(
                engine,
                node_id=self.node_id,
                host=settings.host,
                port=settings.port,
                clock_ms=clock_ms,
                cluster_size=settings.cluster_size,
                join=self.join,
                secret=CLUSTER_SECRET,
                committer=GroupCommitter(engine),
                transport=SimTransport(self.wire, endpoint),
            )
        if settings.log_compact_entries:
            node.host.log_compact_entries = settings.log_compact_entries
            node.host.log_keep_entries = settings.log_keep_entries
        endpoint.serve = self._serve
        endpoint.on_raft = node.host.receive
        endpoint.on_unreachable = node.host.peer_unreachable
        self.wire.attach(endpoint)
        self.node, self.loop, self._engine, self.endpoint = node, loop, engine, endpoint
        self.started = False
        loop.create_task(self._start(node))
        self.trace.log(
            self.now_us(),
            "n%d   BOOT incarnation %d (disk: %d bytes)",
            self.node_id,
            self.incarnation,
            engine.approximate_bytes(),
        )

    async def _start(self, node: Node) -> None:
        try:
            await node.start()
        except SpindleError as error:
            self.start_failures += 1
            self.trace.log(self.now_us(), "n%d   start failed: %s", self.node_id, error)
            return
        self.started = True

    def _serve(self, tenant: str, request: p.Request, forwarded: bool) -> Any:
        node = self.node
        assert node is not None
        return node.execute(tenant, request, forwarded=forwarded)

    def crash(self) -> None:
        """Kill the process and cut the machine's power: unsynced writes may be lost."""
        assert self.node is not None and self.loop is not None and self._engine is not None
        self.loop.kill()
        self.driver.remove(self.loop)
        self.graveyard.append(self.loop)
        self._engine.dead = True
        self.wire.detach(self.node_id)
        kept, lost = self.disk.crash(self.rng)
        self.node, self.loop, self._engine, self.endpoint = None, None, None, None
        self.crashes += 1
        self.trace.log(
            self.now_us(),
            "n%d   CRASH (kept %d of %d unsynced write batches)",
            self.node_id,
            kept,
            kept + lost,
        )

    def pause(self) -> int:
        """Stop the process (SIGSTOP, a long GC pause); returns the token that resumes it."""
        if self.loop is None or self.loop.paused:
            return 0
        self.loop.paused = True
        self._pause_token += 1
        return self._pause_token

    def resume(self, token: int | None = None) -> None:
        """Resume the pause ``token`` names (None: any pause)."""
        if self.loop is None or not self.loop.paused:
            return
        if token is not None and token != self._pause_token:
            return
        self.loop.paused = False
        self.trace.log(self.now_us(), "n%d   RESUME", self.node_id)

    @property
    def paused(self) -> bool:
        return self.loop is not None and self.loop.paused

    def bury(self) -> None:
        """End of the run: forget the dead incarnations."""
        self.graveyard.clear()

    # -- introspection -----------------------------------------------------------------------

    def _loop_exception(self, loop: Any, context: dict[str, Any]) -> None:
        if isinstance(loop, SimEventLoop) and loop.killed:
            return
        message = str(context.get("message", ""))
        error = context.get("exception")
        text = f"n{self.node_id}: {message}" + (f": {error!r}" if error is not None else "")
        self.trace.log(self.now_us(), "LOOP  %s", text)
        if "never retrieved" in message:
            return  # a future whose waiter gave up (a timeout) failed later: not a bug
        self.loop_errors.append(text)

    def leads(self) -> list[int]:
        """Groups this node leads now."""
        node = self.node
        if node is None:
            return []
        return [group_id for group_id, r in node.host.replicas.items() if r.is_leader()]
