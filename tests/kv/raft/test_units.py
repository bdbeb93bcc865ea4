"""Unit tests of the Raft core's parts, where a scenario file would be less clear."""

from __future__ import annotations

import msgspec
import pytest

from spindle.kv.raft import (
    CompactedError,
    Config,
    ConfState,
    DropReason,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    Role,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from spindle.kv.raft.log import RaftLog
from spindle.kv.raft.progress import Inflights, Progress, ProgressState, quorum_min
from tests.kv.raft.datadriven import Network


def entries(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(term=t, index=start + i) for i, t in enumerate(terms)]


def test_memory_storage_append_compact_snapshot() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 2, 2, 3))
    assert (storage.first_index(), storage.last_index()) == (1, 5)
    storage.append(entries(4, 4, start=4))  # replaces the conflicting suffix
    assert [storage.term(i) for i in range(1, 6)] == [1, 1, 2, 4, 4]
    storage.create_snapshot(3, ConfState(voters=(1,)), b"state")
    storage.compact(3)
    assert storage.first_index() == 4
    assert storage.term(3) == 2  # the compaction point's term is kept
    with pytest.raises(CompactedError):
        storage.entries(3, 5)
    with pytest.raises(UnavailableError):
        storage.term(6)
    big = [Entry(term=5, index=6 + i, data=b"x" * 100) for i in range(3)]
    storage.append(big)
    assert len(storage.entries(6, 9, max_bytes=150)) == 1  # at least one, within the limit
    assert len(storage.entries(6, 9, max_bytes=10)) == 1


def test_raft_log_append_and_conflict() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 2))
    log = RaftLog(storage)
    # Matching prefix, conflicting entry at index 3: replaced.
    assert log.maybe_append(2, 1, 0, tuple(entries(3, 3, start=3))) == 4
    assert [log.term(i) for i in range(1, 5)] == [1, 1, 3, 3]
    # (index, term) not in our log: rejected.
    assert log.maybe_append(4, 2, 0, ()) is None
    assert log.find_conflict_by_term(4, 2) == (2, 1)
    assert log.find_conflict_by_term(4, 3) == (4, 3)
    log.commit_to(3)
    log.commit_to(1)  # never moves backwards
    assert log.committed == 3
    with pytest.raises(AssertionError):
        log.commit_to(9)  # beyond the last index
    with pytest.raises(AssertionError):
        log.applied_to(4)  # beyond the commit index
    with pytest.raises(AssertionError):
        log.append(entries(9, start=2))  # overwriting a committed entry


def test_log_commits_only_current_term_entries() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 2))
    log = RaftLog(storage)
    assert not log.maybe_commit(2, term=3)  # figure 8: index 2 is from term 2
    assert log.maybe_commit(2, term=2)


def test_inflights_and_progress_backtracking() -> None:
    inflights = Inflights(capacity_msgs=2)
    inflights.add(5)
    inflights.add(9)
    assert inflights.full()
    inflights.free_le(6)
    assert len(inflights) == 1 and not inflights.full()

    pr = Progress(next_index=11, max_inflight_msgs=4, is_learner=False)
    assert pr.state is ProgressState.PROBE
    assert not pr.maybe_decrease_to(7, 3)  # stale: we did not probe at 7
    assert pr.maybe_decrease_to(10, 3)  # the follower's hint lets us jump to 4
    assert pr.next_index == 4
    assert pr.maybe_update(6) and pr.match_index == 6
    pr.become_replicate()
    assert pr.next_index == 7
    assert quorum_min([9, 4, 6]) == 6
    assert quorum_min([9, 4, 6, 1]) == 4


def test_message_round_trips_through_msgpack() -> None:
    message = Message(
        type=MessageType.SNAP,
        src=1,
        dst=2,
        term=3,
        entries=(Entry(term=3, index=7, data=b"x"),),
        snapshot=SnapshotMetadata(index=5, term=2, conf_state=ConfState(voters=(1, 2))),
        snapshot_chunk=b"abc",
    )
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=Message)
    assert decoded == message
    assert decoded.type is MessageType.SNAP


def single_node() -> tuple[RawNode, MemoryStorage]:
    storage = MemoryStorage()
    meta = SnapshotMetadata(index=1, term=1, conf_state=ConfState(voters=(1,)))
    storage.apply_snapshot(Snapshot(metadata=meta))
    return RawNode(Config(node_id=1), storage), storage


def drain(node: RawNode, storage: MemoryStorage) -> list[Entry]:
    committed: list[Entry] = []
    while node.has_ready():
        ready = node.ready()
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        committed += ready.committed_entries
        node.advance()
    return committed


def test_single_node_commits_and_reads_at_once() -> None:
    node, storage = single_node()
    with pytest.raises(ProposalDropped) as dropped:
        node.propose(b"early")
    assert dropped.value.reason is DropReason.NO_LEADER
    node.campaign()
    assert node.status().role is Role.LEADER
    index = node.propose(b"x")
    assert [e.data for e in drain(node, storage)] == [b"", b"x"]
    node.read_index(b"ctx")
    ready = node.ready()
    assert [(r.index, r.request_ctx) for r in ready.read_states] == [(index, b"ctx")]
    node.advance()


def test_restart_recovers_hard_state_and_log() -> None:
    node, storage = single_node()
    node.campaign()
    node.propose(b"x")
    drain(node, storage)
    restarted = RawNode(Config(node_id=1, applied_index=3), storage)
    status = restarted.status()
    assert (status.term, status.vote, status.commit_index, status.last_index) == (1, 1, 3, 3)
    assert status.role is Role.FOLLOWER


def test_ready_must_be_advanced_before_the_next() -> None:
    node, _ = single_node()
    node.campaign()
    node.ready()
    with pytest.raises(AssertionError):
        node.ready()


def elect(network: Network) -> None:
    network.run("campaign 1")
    network.run("stabilize")
    assert network.nodes[1].raw.status().role is Role.LEADER


def test_flow_control_bounds_inflight_appends() -> None:
    network = Network()
    network.run("add-nodes 2 max-inflight=2 max-msg-bytes=60")
    elect(network)
    for i in range(6):
        network.run(f"propose 1 entry{i}")
    leader = network.nodes[1].raw
    out = network.run("process-ready 1")
    appends = [line for line in out if " APP " in line and not line.endswith("[]")]
    # Six entries are waiting, but only max_inflight_msgs=2 appends go out before acks,
    # each with at most two ~36-byte entries under the 60-byte limit.
    assert len(appends) == 2
    assert all(line.count("'entry") <= 2 for line in appends)
    assert leader.status().progress[2].inflight_msgs == 2
    network.run("stabilize")
    assert network.nodes[2].applied == [f"entry{i}" for i in range(6)]


def test_lost_snapshot_chunk_is_resent_on_heartbeat() -> None:
    network = Network()
    network.run("add-nodes 3 chunk-bytes=4")
    elect(network)
    network.run("isolate 3")
    for i in range(3):
        network.run(f"propose 1 v{i}")
    network.run("stabilize 1 2")
    network.run("compact 1 5")
    network.run("heal")
    network.run("tick 1")
    network.run("stabilize 1 3")  # heartbeat -> probe -> reject -> first chunk sent
    network.run("process-ready 1")
    chunk_lost = network.run("deliver-msgs 3 drop=true")
    # Chunks travel one at a time; drop whatever is in flight, then let heartbeats repair.
    assert chunk_lost == ["ok"] or all("dropped" in line for line in chunk_lost)
    for _ in range(3):
        network.run("tick 1")
        network.run("stabilize")
    assert network.nodes[3].applied == ["v0", "v1", "v2"]
    assert network.nodes[3].raw.status().first_index == 6


def test_one_vote_per_term() -> None:
    network = Network()
    network.run("add-nodes 3")
    voter = network.nodes[3].raw
    for candidate in (1, 2):
        voter.step(
            Message(type=MessageType.VOTE, src=candidate, dst=3, term=1, index=1, log_term=1)
        )
    responses = [m for m in voter.ready().messages if m.type is MessageType.VOTE_RESP]
    assert [(m.dst, m.reject) for m in responses] == [(1, False), (2, True)]
    assert voter.hard_state().vote == 1


def test_lease_needs_check_quorum() -> None:
    network = Network()
    network.run("add-nodes 3")  # check_quorum off
    elect(network)
    assert not network.nodes[1].raw.lease_valid()


def test_follower_proposal_names_the_leader() -> None:
    network = Network()
    network.run("add-nodes 3")
    elect(network)
    with pytest.raises(ProposalDropped) as dropped:
        network.nodes[2].raw.propose(b"x")
    assert dropped.value.reason is DropReason.NOT_LEADER
    assert dropped.value.leader_id == 1
