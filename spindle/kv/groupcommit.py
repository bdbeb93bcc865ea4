"""Group commit: many requests' writes, one fsync.

Writes reach the engine unsynced and are counted. Whoever needs durability asks for a
future that resolves once everything written so far is synced. One fsync runs at a time,
in a worker thread; the writes that arrive while it runs form the next group. A group is
thus bounded by the requests in flight (connections x
`limits.INFLIGHT_REQUESTS_PER_CONNECTION_MAX`), never by a timer: an idle node syncs at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from spindle.kv.errors import SpindleError
from spindle.kv.storage import Engine, WriteBatch
from spindle.kv.storage.batching import BatchingEngine


class GroupCommitter:
    """`engine` is what the node writes through: writes are queued in it and reach the
    real engine as one batch right before each fsync."""

    def __init__(self, engine: Engine) -> None:
        self.engine = BatchingEngine(engine)
        self.written_seq = 0
        self.durable_seq = 0
        self.syncs = 0
        self._waiters: deque[tuple[int, asyncio.Future[Any], Any]] = deque()
        self._syncing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the first waiter: looked up once (each `get_running_loop` is a
        getpid system call on Python 3.11)."""

    def write(self, batch: WriteBatch) -> int:
        """Apply a batch unsynced; returns its sequence number, which `after_seq` (or
        `after_durable`) later waits for."""
        self.engine.write(batch)
        self.written_seq += 1
        return self.written_seq

    @property
    def dirty(self) -> bool:
        return self.written_seq > self.durable_seq

    def after_durable(self, value: Any) -> asyncio.Future[Any]:
        """A future resolving to `value` (raised, if it is an error) once every write made
        so far is durable."""
        return self._wait(self.written_seq, value)

    def after_seq(self, seq: int, value: Any) -> Any:
        """`value` itself if write `seq` is durable already, else a future of it: a read
        waits only for the writes it may have seen."""
        if seq <= self.durable_seq and self._failure is None:
            return value
        return self._wait(seq, value)

    def _wait(self, seq: int, value: Any) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._failure is not None:
            future.set_exception(SpindleError(f"storage failed: {self._failure}"))
            return future
        if seq <= self.durable_seq:
            _settle(future, value)
            return future
        if self._waiters and self._waiters[-1][0] > seq:
            seq = self._waiters[-1][0]  # keep the waiters in order; it costs no extra fsync
        self._waiters.append((seq, future, value))
        if not self._syncing:
            self._start_sync()
        return future

    def _start_sync(self) -> None:
        self._syncing = True
        target = self.written_seq
        try:
            self.engine.flush()  # on the loop thread: the fsync covers every queued write
        except Exception as error:
            self._syncing = False
            self._fail(error)
            return
        loop = self._loop or asyncio.get_running_loop()
        task = loop.run_in_executor(self._executor, self.engine.sync)
        task.add_done_callback(lambda done: self._synced(done, target))

    def _synced(self, done: asyncio.Future[None], target: int) -> None:
        self._syncing = False
        self.syncs += 1
        error = done.exception()
        if error is not None:
            self._fail(error)
            return
        self.durable_seq = max(self.durable_seq, target)
        waiters = self._waiters
        while waiters and waiters[0][0] <= target:
            _, future, value = waiters.popleft()
            if not future.done():
                _settle(future, value)
        if waiters:
            self._start_sync()

    def _fail(self, error: BaseException) -> None:
        """A failed write or fsync leaves the durable state unknown: refuse from here on
        rather than acknowledge writes that may be lost."""
        self._failure = error
        while self._waiters:
            _, future, _ = self._waiters.popleft()
            if not future.done():
                future.set_exception(SpindleError(f"storage failed: {error}"))

    async def drain(self) -> None:
        """Wait until every write so far is durable (used at shutdown)."""
        if self.dirty:
            await self.after_durable(None)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
