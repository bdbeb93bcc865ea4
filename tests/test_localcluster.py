"""LocalCluster: command lines, the cluster secret, and one real node's life cycle."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from spindle.localcluster import (
    ClusterError,
    LocalCluster,
    LocalClusterConfig,
    NodePorts,
    every_node,
    free_ports,
    node_reports_ready,
    server_supports_cluster_flags,
)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(30)
    assert len(set(ports)) == 30


def test_default_ports_follow_spindle_up() -> None:
    assert NodePorts.default(3) == [
        NodePorts(7379, 7380, 6380),
        NodePorts(7389, 7390, 6381),
        NodePorts(7399, 7400, 6382),
    ]


def test_command_lines_bootstrap_and_join(tmp_path: Path) -> None:
    ports = NodePorts.free(3)
    cluster = LocalCluster(LocalClusterConfig(root=tmp_path, size=3, ports=ports))
    first, second = cluster.command(1), cluster.command(2)
    secret = cluster.cluster_secret()
    assert "--join" not in first
    assert first[first.index("--cluster-size") + 1] == "3"
    assert first[first.index("--node-id") + 1] == "1"
    assert second[second.index("--join") + 1] == f"127.0.0.1:{ports[0].port}"
    assert second[second.index("--node-id") + 1] == "2"
    assert second[second.index("--port") + 1] == str(ports[1].port)
    for node_id, command in ((1, first), (2, second)):
        assert "--cluster-secret" not in command  # not in `ps` output
        assert cluster.environment(node_id)["SPINDLE_CLUSTER_SECRET"] == secret
        assert command[command.index("--data-dir") + 1] == str(tmp_path / f"node{node_id}")
    assert cluster.addresses == [f"127.0.0.1:{p.port}" for p in ports]
    assert cluster.resp_ports == [p.resp_port for p in ports]


def test_children_do_not_inherit_server_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINDLE_JOIN", "10.0.0.1:7379")
    monkeypatch.setenv("SPINDLE_NODE_ID", "9")
    config = LocalClusterConfig(root=tmp_path, ports=NodePorts.free(3), env={"EXTRA": "1"})
    env = LocalCluster(config).environment(1)
    assert "SPINDLE_JOIN" not in env
    assert "SPINDLE_NODE_ID" not in env
    assert env["EXTRA"] == "1"


def test_cluster_secret_is_made_once_private_and_reused(tmp_path: Path) -> None:
    config = LocalClusterConfig(root=tmp_path, size=3, ports=NodePorts.free(3))
    secret = LocalCluster(config).cluster_secret()
    path = tmp_path / "cluster-secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(secret) == 32
    assert LocalCluster(config).cluster_secret() == secret


def test_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalCluster(LocalClusterConfig(root=tmp_path, size=0))
    with pytest.raises(ValueError):
        LocalCluster(LocalClusterConfig(root=tmp_path, size=2, ports=NodePorts.free(3)))
    with pytest.raises(ValueError):
        LocalCluster(LocalClusterConfig(root=tmp_path, size=2, cluster_flags=False))


def test_one_node_life_cycle(tmp_path: Path) -> None:
    """Start, status, SIGSTOP/SIGCONT, SIGKILL and restart, stop, on a real process."""
    config = LocalClusterConfig(
        root=tmp_path,
        size=1,
        ports=NodePorts.free(1),
        cluster_flags=server_supports_cluster_flags(),
        start_timeout_s=60,
    )
    with LocalCluster(config) as cluster:
        statuses = cluster.wait_ready(60, every_node(lambda status: "addresses" in status))
        assert set(statuses) == {1}
        first_pid = cluster.pids[0]
        assert first_pid is not None
        cluster.pause(1)
        with pytest.raises(ClusterError, match="not ready"):
            cluster.wait_ready(1.0)
        cluster.resume(1)
        cluster.wait_ready(30)
        cluster.kill(1)
        assert cluster.pids == [None]
        assert cluster.wait_ready(5) == {}  # a node killed on purpose is not waited for
        cluster.restart(1)
        assert cluster.pids[0] not in (None, first_pid)
        cluster.wait_ready(30)
        cluster.pause(1)  # stop() must still end a paused node
    assert cluster.pids == [None]
    log = cluster.log_path(1).read_text()
    assert log.count("=== ") == 2  # one start marker per start, appended


@pytest.mark.skipif(
    not server_supports_cluster_flags(), reason="`spindle server` has no --cluster-size yet"
)
def test_three_nodes_start_and_a_joiner_restarts(tmp_path: Path) -> None:
    config = LocalClusterConfig(root=tmp_path, size=3, ports=NodePorts.free(3))
    with LocalCluster(config) as cluster:
        ready = every_node(node_reports_ready)
        assert set(cluster.wait_ready(60, ready)) == {1, 2, 3}
        cluster.kill(3)
        cluster.restart(3)
        starts = [
            line for line in cluster.log_path(3).read_text().splitlines() if line.startswith("===")
        ]
        assert len(starts) == 2
        assert all(f"--join {cluster.address(1)}" in line for line in starts)
        assert set(cluster.wait_ready(60, ready)) == {1, 2, 3}
    assert cluster.pids == [None, None, None]
