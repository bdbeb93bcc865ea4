"""The virtual-time asyncio loop and the driver that runs many of them on one clock."""

from __future__ import annotations

import asyncio

import pytest

from spindle.sim.aioloop import LivelockError, LoopDriver, SimEventLoop, run_virtual
from spindle.sim.scheduler import Scheduler


def test_sleeps_cost_no_wall_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(600)
        await asyncio.wait_for(asyncio.sleep(10), timeout=20)
        return loop.time() - start

    assert run_virtual(main) == pytest.approx(610)


def test_a_timeout_fires_in_virtual_time() -> None:
    async def main() -> str:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), timeout=5)
        except TimeoutError:
            return "timed out"
        return "woke"

    assert run_virtual(main) == "timed out"


def test_executor_work_takes_the_simulated_delay_and_runs_inline() -> None:
    loop = SimEventLoop(executor_delay_s=lambda: 0.25)
    calls: list[float] = []

    async def main() -> int:
        result = await loop.run_in_executor(None, lambda: calls.append(loop.time()) or 7)
        return int(result)

    assert loop.run_until_complete(main()) == 7
    assert calls == [pytest.approx(0.25)]
    loop.close()


def test_driver_interleaves_loops_on_one_clock_with_drift() -> None:
    scheduler = Scheduler()
    driver = LoopDriver(scheduler)
    fast = driver.new_loop("fast", drift_ppm=100_000)  # 10% fast
    slow = driver.new_loop("slow")
    woke: list[tuple[str, int]] = []

    async def sleeper(name: str) -> None:
        await asyncio.sleep(1.1)
        woke.append((name, scheduler.now_us))

    fast.create_task(sleeper("fast"))
    slow.create_task(sleeper("slow"))
    scheduler.at(500_000, lambda: woke.append(("network", scheduler.now_us)))
    assert not driver.run_until(5_000_000)
    assert [name for name, _ in woke] == ["network", "fast", "slow"]
    assert woke[1][1] == pytest.approx(1_000_000, abs=2)  # 1.1 s local at 110% speed
    assert woke[2][1] == pytest.approx(1_100_000, abs=2)


def test_a_paused_loop_runs_late_and_a_killed_one_never() -> None:
    scheduler = Scheduler()
    driver = LoopDriver(scheduler)
    paused, killed = driver.new_loop("paused"), driver.new_loop("killed")
    ran: list[tuple[str, int]] = []
    paused.call_later(0.1, lambda: ran.append(("paused", scheduler.now_us)))
    killed.call_later(0.1, lambda: ran.append(("killed", scheduler.now_us)))
    paused.paused = True
    killed.kill()
    scheduler.at(300_000, lambda: setattr(paused, "paused", False))
    driver.run_until(1_000_000)
    assert ran == [("paused", 300_000)]


def test_a_loop_that_never_lets_time_pass_is_reported() -> None:
    scheduler = Scheduler()
    driver = LoopDriver(scheduler)
    loop = driver.new_loop("spinner")

    async def spin() -> None:
        while True:
            await asyncio.sleep(0)

    loop.create_task(spin())
    with pytest.raises(LivelockError):
        driver.run_until(1_000_000)
    loop.kill()
