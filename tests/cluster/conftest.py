"""Real `spindle server` processes: on loopback, or each in its own network namespace."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from spindle.faults import netns
from spindle.faults.netns import NetnsNetwork
from spindle.faults.run import fault_cluster
from spindle.localcluster import LocalCluster

FAULT_SECONDS_ENV = "SPINDLE_FAULT_SECONDS"
FAULT_SECONDS_DEFAULT = 8.0


def fault_seconds() -> float:
    """Seconds of faults per workload test: SPINDLE_FAULT_SECONDS, else a short CI run."""
    raw = os.environ.get(FAULT_SECONDS_ENV, "")
    return float(raw) if raw else FAULT_SECONDS_DEFAULT


def netns_skip_reason() -> str | None:
    reason = netns.unavailable_reason()
    return None if reason is None else f"network namespaces unavailable: {reason}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three ready nodes on loopback (node 1 bootstrapped, 2 and 3 joined)."""
    with fault_cluster(tmp_path / "cluster") as (started, _):
        yield started


@pytest.fixture
def netns_cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, NetnsNetwork]]:
    """Three ready nodes, each in its own network namespace (skips where that cannot be
    done: not root, or no iproute2)."""
    reason = netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with fault_cluster(tmp_path / "cluster", netns_on=True) as (started, network):
        assert network is not None
        yield started, network
