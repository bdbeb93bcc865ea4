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
    ReadDropped,
    Role,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
    lease_margin_ticks_min,
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
    by_bytes = Inflights(capacity_msgs=100, capacity_bytes=10)
    by_bytes.add(1, 6)
    assert not by_bytes.full()
    by_bytes.add(2, 6)  # crosses the budget: sent, then full
    assert by_bytes.full() and by_bytes.bytes == 12
    by_bytes.free_first_one()
    assert not by_bytes.full() and by_bytes.bytes == 6
    by_bytes.reset()
    assert by_bytes.bytes == 0 and len(by_bytes) == 0

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


def test_flow_control_bounds_inflight_bytes() -> None:
    network = Network()
    network.run("add-nodes 2 max-msg-bytes=1 max-inflight-bytes=13")
    elect(network)
    for i in range(6):
        network.run(f"propose 1 entry{i}")  # 6 bytes each, one per append message
    leader = network.nodes[1].raw
    out = network.run("process-ready 1")
    appends = [line for line in out if " APP " in line and not line.endswith("[]")]
    # 256 messages may be in flight, but after three (18 bytes) the 13-byte budget is
    # spent: the third crosses it and still goes out, no fourth.
    assert len(appends) == 3
    assert leader.status().progress[2].inflight_bytes == 18
    network.run("stabilize")
    assert network.nodes[2].applied == [f"entry{i}" for i in range(6)]
    assert leader.status().progress[2].inflight_bytes == 0


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


def test_lease_margin_covers_granularity_and_drift() -> None:
    assert lease_margin_ticks_min(10, 0.0) == 1  # tick granularity alone
    assert lease_margin_ticks_min(10, 0.05) == 2
    assert lease_margin_ticks_min(50, 0.1) == 6
    # A configured margin below the safe one is raised; a larger one is kept.
    assert Config(node_id=1, lease_margin_ticks=1).effective_lease_margin_ticks() == 2
    assert Config(node_id=1, lease_margin_ticks=4).effective_lease_margin_ticks() == 4
    exact = Config(node_id=1, lease_margin_ticks=1, max_clock_drift_ratio=0.0)
    assert exact.effective_lease_margin_ticks() == 1


def test_starting_a_transfer_does_not_postpone_check_quorum() -> None:
    network = Network()
    network.run("add-nodes 3 checkquorum=true")
    elect(network)
    network.run("isolate 1")
    leader = network.nodes[1].raw
    network.run("tick 1 count=10")  # first check passes on acks from before the cut
    network.run("tick 1 count=9")
    leader.transfer_leadership(2)  # used to reset the check-quorum clock
    assert leader.status().role is Role.LEADER
    network.run("tick 1")
    assert leader.status().role is Role.FOLLOWER


def test_transfer_is_aborted_after_an_election_timeout() -> None:
    network = Network()
    network.run("add-nodes 3 checkquorum=true")
    elect(network)
    network.run("isolate 3")
    network.run("propose 1 x")
    network.run("stabilize")
    leader = network.nodes[1].raw
    leader.transfer_leadership(3)  # 3 lags: the leader waits for it to catch up
    assert leader.status().lead_transferee == 3
    network.run("tick 1 count=9")
    network.run("stabilize 1 2")
    assert leader.status().lead_transferee == 3
    network.run("tick 1")
    assert leader.status().lead_transferee == 0
    assert leader.status().role is Role.LEADER
    assert leader.propose(b"y") > 0


def _state(raw: RawNode) -> tuple[object, ...]:
    s = raw.status()
    return (s.role, s.term, s.vote, s.leader_id, s.commit_index, s.last_index)


@pytest.mark.parametrize("message_type", list(MessageType), ids=lambda t: t.name)
def test_stale_messages_of_every_type_change_nothing(message_type: MessageType) -> None:
    """A message from an earlier term never changes state; only APP/HEARTBEAT (to tell a
    stale leader) and PRE_VOTE (to reject) get an answer, carrying our term."""
    network = Network()
    network.run("add-nodes 3 prevote=true")
    elect(network)
    network.run("isolate 1")
    network.run("campaign 2")  # 2 becomes leader of term 2, 3 its follower
    network.run("stabilize 2 3")
    for node_id in (2, 3):
        raw = network.nodes[node_id].raw
        assert raw.status().term == 2
        before = _state(raw)
        raw.step(
            Message(
                type=message_type,
                src=1,
                dst=node_id,
                term=1,
                index=9,
                log_term=1,
                commit=9,
                entries=(Entry(term=1, index=10),) if message_type is MessageType.APP else (),
                snapshot=SnapshotMetadata(index=9, term=1, conf_state=ConfState(voters=(1,)))
                if message_type is MessageType.SNAP
                else None,
            )
        )
        assert _state(raw) == before
        replies = raw.ready().messages
        raw.advance()
        if message_type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.PRE_VOTE):
            assert [(m.dst, m.term) for m in replies] == [(1, 2)]
            if message_type is MessageType.PRE_VOTE:
                assert replies[0].reject
        else:
            assert replies == []


@pytest.mark.parametrize(
    "message_type",
    [t for t in MessageType if t not in (MessageType.VOTE, MessageType.PRE_VOTE)],
    ids=lambda t: t.name,
)
def test_higher_term_messages_in_and_out_of_lease(message_type: MessageType) -> None:
    """In lease a follower adopts a higher term only from a leader (APP, HEARTBEAT, SNAP) or
    TIMEOUT_NOW; out of lease, any higher-term message moves it to that term."""
    leader_types = (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP)
    for in_lease in (True, False):
        network = Network()
        network.run("add-nodes 3 prevote=true checkquorum=true")
        elect(network)
        follower = network.nodes[2].raw
        if not in_lease:
            network.run("isolate 2")
            network.run("tick 2 count=10")  # lease held, but 2 has not campaigned yet
            assert follower.status().role is Role.FOLLOWER
        follower.step(
            Message(
                type=message_type,
                src=3,
                dst=2,
                term=5,
                index=2,
                log_term=1,
                snapshot=SnapshotMetadata(index=2, term=1, conf_state=ConfState(voters=(1, 2, 3)))
                if message_type is MessageType.SNAP
                else None,
            )
        )
        s = follower.status()
        moved = not in_lease or message_type in (*leader_types, MessageType.TIMEOUT_NOW)
        if message_type is MessageType.PRE_VOTE_RESP:
            moved = False  # a granted PreVote response never moves terms
        assert (s.term >= 5) == moved, (in_lease, s)
        if message_type in leader_types:
            assert s.leader_id == 3


def test_leader_asserts_one_leader_per_term() -> None:
    network = Network()
    network.run("add-nodes 3")
    elect(network)
    leader = network.nodes[1].raw
    with pytest.raises(AssertionError, match="two leaders"):
        leader.step(Message(type=MessageType.HEARTBEAT, src=2, dst=1, term=1))
    follower = network.nodes[3].raw
    with pytest.raises(AssertionError, match="two leaders"):
        follower.step(Message(type=MessageType.HEARTBEAT, src=2, dst=3, term=1))


def test_drop_reasons_carry_leader_hints() -> None:
    network = Network()
    network.run("add-nodes 3")
    network.nodes[1].raw.campaign()
    with pytest.raises(ProposalDropped) as dropped:
        network.nodes[1].raw.propose(b"x")  # a candidate: no leader known
    assert (dropped.value.reason, dropped.value.leader_id) == (DropReason.NO_LEADER, 0)
    network.run("stabilize")
    network.run("isolate 3")
    network.run("propose 1 x")
    network.run("stabilize")
    leader = network.nodes[1].raw
    leader.transfer_leadership(3)
    with pytest.raises(ProposalDropped) as dropped:
        leader.propose(b"y")
    assert (dropped.value.reason, dropped.value.leader_id) == (
        DropReason.TRANSFERRING_LEADERSHIP,
        3,
    )
    assert "leader hint: 3" in str(dropped.value)


def test_local_read_beyond_the_bound_raises() -> None:
    network = Network()
    network.run("add-nodes 3 max-pending-reads=1")
    network.run("campaign 1")
    network.run("process-ready 1")
    network.run("deliver-msgs 2 3")
    network.run("process-ready 2 3")
    network.run("deliver-msgs 1")
    leader = network.nodes[1].raw
    assert leader.status().role is Role.LEADER
    leader.read_index(b"a")  # waits for the leader's first commit, and counts
    with pytest.raises(ReadDropped) as dropped:
        leader.read_index(b"b")
    assert dropped.value.reason is DropReason.TOO_MANY_PENDING_READS
    network.run("stabilize")
    leader.read_index(b"c")  # room again once "a" was served


def test_snapshot_chunks_from_two_leaders_are_never_joined() -> None:
    """Two leaders' snapshots at one index hold the same state, not the same bytes: a chunk
    from a new leader that continues an old leader's transfer must restart it."""
    network = Network()
    network.run("add-nodes 3")
    follower = network.nodes[3].raw
    meta = SnapshotMetadata(index=9, term=1, conf_state=ConfState(voters=(1, 2, 3)))

    def chunk(src: int, term: int, offset: int, data: bytes, done: bool) -> None:
        follower.step(
            Message(
                type=MessageType.SNAP,
                src=src,
                dst=3,
                term=term,
                snapshot=meta,
                snapshot_offset_bytes=offset,
                snapshot_chunk=data,
                snapshot_done=done,
            )
        )

    chunk(1, 1, 0, b"AAAA", False)  # leader 1's first half
    chunk(2, 2, 4, b"bbbb", True)  # leader 2 (term 2) continues at its own offset 4
    ready = follower.ready()
    assert ready.snapshot is None  # not installed from mixed bytes
    snap_resps = [m for m in ready.messages if m.type is MessageType.SNAP_RESP]
    assert [(m.dst, m.index, m.reject) for m in snap_resps] == [(1, 4, False), (2, 0, True)]
    follower.advance()
    chunk(2, 2, 0, b"aaaa", False)
    chunk(2, 2, 4, b"bbbb", True)
    ready = follower.ready()
    assert ready.snapshot is not None and ready.snapshot.data == b"aaaabbbb"


def test_a_proposal_batch_is_one_append_per_follower() -> None:
    network = Network()
    network.run("add-nodes 3")
    elect(network)
    leader = network.nodes[1].raw
    last = leader.status().last_index
    first = leader.propose_batch([b"a", b"b", b"c"])
    assert first == last + 1
    out = network.run("process-ready 1")
    appends = [line for line in out if " APP " in line and "'c'" in line]
    assert len(appends) == 2, out  # one message per follower carrying all three
    assert all("'a'" in line and "'b'" in line for line in appends)
    network.run("stabilize")
    assert network.nodes[3].applied[-3:] == ["a", "b", "c"]
    with pytest.raises(ProposalDropped) as dropped:
        network.nodes[2].raw.propose_batch([b"x", b"y"])
    assert dropped.value.leader_id == 1
