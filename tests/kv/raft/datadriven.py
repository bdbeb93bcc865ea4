"""A small datadriven interpreter for Raft scenarios, in the style of etcd-io/raft's testdata.

A scenario file is a sequence of blocks::

    command arg key=value ...
    ----
    expected output (no blank lines; "ok" when there is nothing to show)
    <blank line>

Lines starting with ``#`` between blocks are comments. With SPINDLE_REWRITE=1 the expected
output is replaced by the actual output, for review with ``git diff``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random

import msgspec

from spindle.kv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    ReadDropped,
    Ready,
    Snapshot,
    SnapshotMetadata,
)

REWRITE = os.environ.get("SPINDLE_REWRITE") == "1"
MAX_STABILIZE_ROUNDS = 1000


@dataclasses.dataclass
class TestCase:
    line_number: int
    command: str
    expected: list[str]


def parse(text: str) -> list[TestCase]:
    cases: list[TestCase] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        command, line_number = line, i + 1
        i += 1
        assert i < len(lines) and lines[i].strip() == "----", f"line {line_number}: no ----"
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        cases.append(TestCase(line_number, command, expected))
    return cases


def render(text: str, cases: list[TestCase], outputs: list[list[str]]) -> str:
    """Rewrites ``text`` with ``outputs`` in place of each case's expected output."""
    lines = text.splitlines()
    result: list[str] = []
    i = 0
    case_index = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#") and case_index < len(cases):
            result.append(lines[i])
            result.append("----")
            i += 2
            while i < len(lines) and lines[i].strip():
                i += 1
            result.extend(outputs[case_index])
            case_index += 1
            continue
        result.append(lines[i])
        i += 1
    return "\n".join(result) + "\n"


def parse_args(words: list[str]) -> tuple[list[str], dict[str, str]]:
    positional: list[str] = []
    keyed: dict[str, str] = {}
    for word in words:
        if "=" in word:
            key, value = word.split("=", 1)
            keyed[key] = value
        else:
            positional.append(word)
    return positional, keyed


def parse_ids(value: str) -> list[int]:
    value = value.strip("()")
    return [int(x) for x in value.split(",") if x]


def format_entry(entry: Entry) -> str:
    if entry.type is EntryType.CONF_CHANGE:
        change = ConfChange.decode(entry.data)
        return f"{entry.term}/{entry.index} {change.type.name.lower()} {change.node_id}"
    return f"{entry.term}/{entry.index} {entry.data.decode()!r}"


def format_entries(entries: tuple[Entry, ...] | list[Entry]) -> str:
    return "[" + ", ".join(format_entry(e) for e in entries) + "]"


def format_message(m: Message) -> str:
    parts = [f"{m.src}->{m.dst} {m.type.name} term={m.term}"]
    t = m.type
    if t is MessageType.APP:
        parts.append(f"log={m.log_term}/{m.index} commit={m.commit} {format_entries(m.entries)}")
    elif t is MessageType.APP_RESP:
        parts.append(f"index={m.index}")
        if m.reject:
            parts.append(f"REJECT hint={m.reject_hint_term}/{m.reject_hint_index}")
    elif t in (MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"last={m.log_term}/{m.index}")
        if m.context:
            parts.append(f"ctx={m.context.decode()}")
    elif t in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP):
        parts.append("REJECT" if m.reject else "granted")
    elif t is MessageType.HEARTBEAT:
        parts.append(f"commit={m.commit}")
        if m.context:
            parts.append(f"round={int.from_bytes(m.context, 'big')}")
    elif t is MessageType.HEARTBEAT_RESP:
        if m.context:
            parts.append(f"round={int.from_bytes(m.context, 'big')}")
    elif t is MessageType.SNAP:
        assert m.snapshot is not None
        parts.append(
            f"snap={m.snapshot.term}/{m.snapshot.index} voters={list(m.snapshot.conf_state.voters)}"
            f" offset={m.snapshot_offset_bytes} chunk={len(m.snapshot_chunk)}B"
            + (" done" if m.snapshot_done else "")
        )
    elif t is MessageType.SNAP_RESP:
        parts.append(f"held={m.index}B" + (" REJECT" if m.reject else ""))
    elif t in (MessageType.READ_INDEX, MessageType.READ_INDEX_RESP):
        parts.append(f"ctx={m.context.decode()}")
        if t is MessageType.READ_INDEX_RESP:
            parts.append("REJECT" if m.reject else f"index={m.index}")
    return " ".join(parts)


@dataclasses.dataclass
class Node:
    node_id: int
    raw: RawNode
    storage: MemoryStorage
    config: Config
    applied: list[str] = dataclasses.field(default_factory=list)
    """The replicated state machine: data of applied normal entries, in order."""
    conf_state: ConfState = dataclasses.field(default_factory=ConfState)
    held_ready: Ready | None = None
    """A Ready taken by ``ready`` and not yet handled by ``advance``."""


class Network:
    """Nodes, their in-flight messages and partitions, driven by scenario commands."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.in_flight: list[Message] = []
        self.blocked: set[tuple[int, int]] = set()
        """(src, dst) pairs whose messages are dropped on delivery."""

    # -- command dispatch -------------------------------------------------------------------

    def run(self, command: str) -> list[str]:
        name, *words = command.split()
        args, kwargs = parse_args(words)
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
        assert handler is not None, f"unknown command {name!r}"
        out: list[str] = handler(args, kwargs)
        return out or ["ok"]

    def cmd_add_nodes(self, args: list[str], kw: dict[str, str]) -> list[str]:
        count = int(args[0])
        first_id = max(self.nodes, default=0) + 1
        new_ids = list(range(first_id, first_id + count))
        voters = parse_ids(kw["voters"]) if "voters" in kw else new_ids
        learners = parse_ids(kw.get("learners", ""))
        conf_state = ConfState(voters=tuple(voters), learners=tuple(learners))
        out: list[str] = []
        for node_id in new_ids:
            storage = MemoryStorage()
            if kw.get("empty") != "true":
                # Bootstrap: every initial member starts from a snapshot holding the config.
                meta = SnapshotMetadata(index=1, term=1, conf_state=conf_state)
                storage.apply_snapshot(Snapshot(metadata=meta, data=b""))
            config = Config(
                node_id=node_id,
                election_ticks=int(kw.get("election", "10")),
                heartbeat_ticks=int(kw.get("heartbeat", "1")),
                pre_vote=kw.get("prevote", "false") == "true",
                check_quorum=kw.get("checkquorum", "false") == "true",
                max_inflight_msgs=int(kw.get("max-inflight", "256")),
                max_inflight_bytes=int(kw.get("max-inflight-bytes", str(32 << 20))),
                max_msg_bytes=int(kw.get("max-msg-bytes", str(1 << 20))),
                snapshot_chunk_bytes=int(kw.get("chunk-bytes", str(1 << 20))),
                max_pending_reads=int(kw.get("max-pending-reads", "4096")),
                rng=random.Random(node_id),
            )
            node = Node(node_id, RawNode(config, storage), storage, config)
            if kw.get("empty") != "true":
                node.conf_state = conf_state
            self.nodes[node_id] = node
            status = node.raw.status()
            out.append(
                f"{node_id}: term={status.term} first={status.first_index} last={status.last_index}"
                f" voters={list(status.conf_state.voters)}"
                f" learners={list(status.conf_state.learners)}"
            )
        return out

    def cmd_restart(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """Crash and restart: volatile state is lost, the node recovers from its storage.

        The harness's state machine survives (as if durable up to its applied index); a
        pending Ready is discarded unprocessed, like writes lost in a crash.
        """
        out: list[str] = []
        for node_id in self._ids(args):
            node = self.nodes[node_id]
            node.config = dataclasses.replace(
                node.config,
                applied_index=node.raw.status().applied_index,
                rng=random.Random(node_id),
            )
            node.raw = RawNode(node.config, node.storage)
            node.held_ready = None
            self.in_flight = [m for m in self.in_flight if m.dst != node_id]
            s = node.raw.status()
            out.append(
                f"{node_id}: term={s.term} vote={s.vote} commit={s.commit_index}"
                f" last={s.last_index}"
            )
        return out

    def cmd_campaign(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.nodes[int(args[0])].raw.campaign()
        return []

    def cmd_propose(self, args: list[str], kw: dict[str, str]) -> list[str]:
        node = self.nodes[int(args[0])]
        try:
            index = node.raw.propose(args[1].encode())
        except ProposalDropped as exc:
            return [f"dropped: {exc.reason.name} leader={exc.leader_id}"]
        return [f"index {index}"]

    def cmd_propose_conf_change(self, args: list[str], kw: dict[str, str]) -> list[str]:
        node = self.nodes[int(args[0])]
        change_type = {
            "add-voter": ConfChangeType.ADD_VOTER,
            "add-learner": ConfChangeType.ADD_LEARNER,
            "remove": ConfChangeType.REMOVE_NODE,
        }[args[1]]
        try:
            index = node.raw.propose_conf_change(ConfChange(change_type, int(args[2])))
        except ProposalDropped as exc:
            detail = f" ({exc.detail})" if exc.detail else ""
            return [f"dropped: {exc.reason.name} leader={exc.leader_id}{detail}"]
        return [f"index {index}"]

    def cmd_transfer_leadership(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.nodes[int(kw["from"])].raw.transfer_leadership(int(kw["to"]))
        return []

    def cmd_read_index(self, args: list[str], kw: dict[str, str]) -> list[str]:
        node = self.nodes[int(args[0])]
        try:
            node.raw.read_index(args[1].encode(), use_lease=kw.get("lease") == "true")
        except ReadDropped as exc:
            return [f"dropped: {exc.reason.name} leader={exc.leader_id}"]
        return []

    def cmd_report_unreachable(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """``report-unreachable from=1 to=3``: the leader's transport failed to reach 3."""
        self.nodes[int(kw["from"])].raw.report_unreachable(int(kw["to"]))
        return []

    def cmd_send_msg(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """Puts a hand-made message in flight (a delayed or stale one), e.g.
        ``send-msg type=PRE_VOTE_RESP from=3 to=2 term=5 reject=true``."""
        m = Message(
            type=MessageType[kw["type"]],
            src=int(kw["from"]),
            dst=int(kw["to"]),
            term=int(kw["term"]),
            index=int(kw.get("index", "0")),
            log_term=int(kw.get("log-term", "0")),
            commit=int(kw.get("commit", "0")),
            reject=kw.get("reject") == "true",
            context=kw.get("ctx", "").encode(),
        )
        self.in_flight.append(m)
        return [format_message(m)]

    def cmd_ready(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """Takes a node's Ready and holds it: inputs may follow before ``advance``."""
        node = self.nodes[int(args[0])]
        assert node.held_ready is None, "a Ready is already held"
        node.held_ready = node.raw.ready()
        return [f"> {node.node_id} took Ready"] + [
            "  " + line for line in self._describe_ready(node.held_ready)
        ]

    def cmd_advance(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """Handles the held Ready (persist, send, apply), then advances."""
        node = self.nodes[int(args[0])]
        ready = node.held_ready
        assert ready is not None, "no Ready held"
        node.held_ready = None
        return [f"> {node.node_id} advancing", *self._handle_ready(node, ready)]

    def cmd_tick(self, args: list[str], kw: dict[str, str]) -> list[str]:
        count = int(kw.get("count", "1"))
        for node_id in self._ids(args):
            for _ in range(count):
                self.nodes[node_id].raw.tick()
        return []

    def cmd_tick_election(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """Ticks enough for any randomized election timeout (2 x election_ticks) to fire."""
        for node_id in self._ids(args):
            raw = self.nodes[node_id].raw
            for _ in range(2 * raw._raft.config.election_ticks):
                raw.tick()
        return []

    def cmd_lease(self, args: list[str], kw: dict[str, str]) -> list[str]:
        return [f"{i}: lease_valid={self.nodes[i].raw.lease_valid()}" for i in self._ids(args)]

    def cmd_isolate(self, args: list[str], kw: dict[str, str]) -> list[str]:
        for node_id in self._ids(args):
            for other in self.nodes:
                if other != node_id:
                    self.blocked |= {(node_id, other), (other, node_id)}
        return []

    def cmd_partition(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """``partition 1 2 / 3 4 5``: no messages cross between the groups."""
        joined = " ".join(args)
        groups = [[int(x) for x in part.split()] for part in joined.split("/")]
        for a in groups:
            for b in groups:
                if a is not b:
                    self.blocked |= {(x, y) for x in a for y in b}
        return []

    def cmd_block(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """``block from=1 to=2``: a one-way cut."""
        self.blocked.add((int(kw["from"]), int(kw["to"])))
        return []

    def cmd_heal(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.blocked.clear()
        return []

    def cmd_compact(self, args: list[str], kw: dict[str, str]) -> list[str]:
        node = self.nodes[int(args[0])]
        index = int(args[1])
        data = msgspec.json.encode(node.applied[: self._applied_count_at(node, index)])
        node.storage.create_snapshot(index, node.conf_state, data)
        node.storage.compact(index)
        return [f"{node.node_id}: first={node.storage.first_index()} snapshot@{index}"]

    def _applied_count_at(self, node: Node, index: int) -> int:
        # The harness's state machine is a list, so it can only snapshot at its applied index.
        assert index == node.raw.status().applied_index, "compact only at the applied index"
        return len(node.applied)

    def cmd_process_ready(self, args: list[str], kw: dict[str, str]) -> list[str]:
        out: list[str] = []
        for node_id in self._ids(args):
            out += self._process_ready(self.nodes[node_id])
        return out

    def cmd_deliver_msgs(self, args: list[str], kw: dict[str, str]) -> list[str]:
        drop = kw.get("drop") == "true"
        out: list[str] = []
        for node_id in self._ids(args):
            out += self._deliver(node_id, drop=drop)
        return out

    def cmd_stabilize(self, args: list[str], kw: dict[str, str]) -> list[str]:
        ids = self._ids(args)
        out: list[str] = []
        for _ in range(MAX_STABILIZE_ROUNDS):
            progressed = False
            for node_id in ids:
                node = self.nodes[node_id]
                if node.held_ready is None and node.raw.has_ready():
                    out += self._process_ready(node)
                    progressed = True
            for node_id in ids:
                if any(m.dst == node_id for m in self.in_flight):
                    out += self._deliver(node_id, drop=False)
                    progressed = True
            if not progressed:
                return out
        raise AssertionError("stabilize did not converge")

    def cmd_raft_state(self, args: list[str], kw: dict[str, str]) -> list[str]:
        out: list[str] = []
        for node_id in self._ids(args):
            s = self.nodes[node_id].raw.status()
            out.append(
                f"{node_id}: {s.role.name} term={s.term} lead={s.leader_id} vote={s.vote}"
                f" commit={s.commit_index} applied={s.applied_index} last={s.last_index}"
            )
        return out

    def cmd_raft_log(self, args: list[str], kw: dict[str, str]) -> list[str]:
        out: list[str] = []
        for node_id in self._ids(args):
            node = self.nodes[node_id]
            s = node.raw.status()
            entries = node.storage.entries(s.first_index, node.storage.last_index() + 1)
            out.append(f"{node_id}: first={s.first_index} {format_entries(entries)}")
        return out

    def cmd_applied(self, args: list[str], kw: dict[str, str]) -> list[str]:
        return [f"{i}: {self.nodes[i].applied}" for i in self._ids(args)]

    def cmd_status(self, args: list[str], kw: dict[str, str]) -> list[str]:
        s = self.nodes[int(args[0])].raw.status()
        out = [f"voters={list(s.conf_state.voters)} learners={list(s.conf_state.learners)}"]
        for node_id, pr in s.progress.items():
            out.append(
                f"{node_id}: {pr.state} match={pr.match_index} next={pr.next_index}"
                f" inflight={pr.inflight_msgs}" + (" learner" if pr.is_learner else "")
            )
        return out

    # -- mechanics --------------------------------------------------------------------------

    def _ids(self, args: list[str]) -> list[int]:
        return [int(a) for a in args] if args else sorted(self.nodes)

    def _process_ready(self, node: Node) -> list[str]:
        raw = node.raw
        if node.held_ready is not None or not raw.has_ready():
            return []
        ready = raw.ready()
        out = [f"> {node.node_id} handling Ready"]
        out += ["  " + line for line in self._describe_ready(ready)]
        return out + self._handle_ready(node, ready)

    def _handle_ready(self, node: Node, ready: Ready) -> list[str]:
        raw = node.raw
        out: list[str] = []
        # Persist, then send, then apply: the order the Ready contract requires.
        if ready.snapshot is not None:
            node.storage.apply_snapshot(ready.snapshot)
        node.storage.append(ready.entries)
        if ready.hard_state is not None:
            node.storage.set_hard_state(ready.hard_state)
        # A partition loses messages at send time, so nothing crosses it after a heal either.
        self.in_flight.extend(m for m in ready.messages if (m.src, m.dst) not in self.blocked)
        if ready.snapshot is not None:
            node.applied = msgspec.json.decode(ready.snapshot.data) if ready.snapshot.data else []
            node.conf_state = ready.snapshot.metadata.conf_state
        for entry in ready.committed_entries:
            if entry.type is EntryType.CONF_CHANGE:
                node.conf_state = raw.apply_conf_change(ConfChange.decode(entry.data))
                out.append(
                    f"  applied conf change: voters={list(node.conf_state.voters)}"
                    f" learners={list(node.conf_state.learners)}"
                )
            elif entry.data:
                node.applied.append(entry.data.decode())
        raw.advance()
        return out

    def _describe_ready(self, ready: Ready) -> list[str]:
        out: list[str] = []
        if ready.soft_state is not None:
            out.append(f"Lead:{ready.soft_state.leader_id} {ready.soft_state.role.name}")
        if ready.hard_state is not None:
            hs = ready.hard_state
            out.append(f"HardState term={hs.term} vote={hs.vote} commit={hs.commit}")
        if ready.entries:
            out.append(f"Entries: {format_entries(ready.entries)}")
        if ready.snapshot is not None:
            meta = ready.snapshot.metadata
            out.append(
                f"Snapshot {meta.term}/{meta.index} voters={list(meta.conf_state.voters)}"
                f" learners={list(meta.conf_state.learners)} data={len(ready.snapshot.data)}B"
            )
        if ready.committed_entries:
            out.append(f"CommittedEntries: {format_entries(ready.committed_entries)}")
        out += [
            format_message(m) + (" (dropped)" if (m.src, m.dst) in self.blocked else "")
            for m in ready.messages
        ]
        out += [
            f"ReadState index={r.index} ctx={r.request_ctx.decode()}" for r in ready.read_states
        ]
        out += [f"DroppedRead ctx={ctx.decode()}" for ctx in ready.dropped_reads]
        return out

    def _deliver(self, node_id: int, *, drop: bool) -> list[str]:
        mine = [m for m in self.in_flight if m.dst == node_id]
        if not mine:
            return []
        self.in_flight = [m for m in self.in_flight if m.dst != node_id]
        out: list[str] = []
        for m in mine:
            if drop or (m.src, m.dst) in self.blocked:
                out.append(f"  dropped: {format_message(m)}")
                continue
            out.append(f"> {node_id} receiving {format_message(m)}")
            self.nodes[node_id].raw.step(m)
        return out


def run_file(path: pathlib.Path) -> None:
    """Runs one scenario file; asserts (or, with SPINDLE_REWRITE=1, rewrites) its output."""
    text = path.read_text()
    cases = parse(text)
    network = Network()
    outputs: list[list[str]] = []
    mismatches: list[str] = []
    for case in cases:
        actual = network.run(case.command)
        outputs.append(actual)
        if actual != case.expected and not REWRITE:
            mismatches.append(
                f"{path.name}:{case.line_number}: {case.command}\n--- expected\n"
                + "\n".join(case.expected)
                + "\n--- actual\n"
                + "\n".join(actual)
            )
            break  # later output depends on this step; show the first divergence only
    if REWRITE:
        path.write_text(render(text, cases, outputs))
        return
    assert not mismatches, "\n".join(mismatches)
