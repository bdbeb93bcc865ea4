"""Network partitions between local nodes, with network namespaces and nothing else.

Each node runs in its own namespace (`ip netns exec`), with one interface `eth0` whose
other end (a veth pair) is plugged into a bridge in the root namespace. Nodes get
10.A.B.1..N/24 and the bridge 10.A.B.254, so this process (the clients and the nemesis)
reaches every node, and the nodes reach each other through the bridge:

    root ns:  bridge spf<tag>br 10.A.B.254 --- veth spf<tag>v1 ... spf<tag>vN
    node i:   ns spf<tag>n<i>, eth0 10.A.B.i (the other end of spf<tag>v<i>)

Faults, none of which needs iptables, nft or a tc module:

- `cut(src, dst)`: src's packets to dst vanish (one way). "drop" mode gives src a permanent
  neighbour entry for dst with a MAC no interface has, so frames leave and are lost:
  silent loss, TCP retransmits and times out, as on a real network. "reject" mode adds an
  `unreachable` route instead: sends fail at once with EHOSTUNREACH.
- `isolate(i)`: node i and every other node cut both ways; clients still reach node i (the
  nasty case: an old leader still takes requests).
- `partition([{1}, {2, 3}])`: cut both ways between groups.
- `unplug(i)`: the host end of node i's veth goes down: nobody, clients included, reaches i.
- `heal()`: undo all of it.

Needs root and iproute2 (`ip`); `unavailable_reason()` says what is missing. Names carry a
random tag so that concurrent runs do not collide; `teardown()` (or leaving the `with`
block) removes the namespaces and the bridge even after a failure.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from types import TracebackType
from typing import Literal

from spindle.localcluster import HTTP_PROBE_TIMEOUT_S, LocalCluster, LocalClusterConfig

CutMode = Literal["drop", "reject"]

NAME_PREFIX = "spf"
"""Every namespace, bridge and veth made here starts with it (interface names <= 15)."""
SUBNET_FIRST_OCTETS = (10, 213)
CLIENT_HOST = 254
"""The bridge's (this process's) address in the subnet: 10.A.B.254."""
NODE_INTERFACE = "eth0"
NOWHERE_MAC = "02:00:5e:ff:ff:fe"
"""A locally administered MAC no interface here has: frames sent to it are lost."""
IP_TIMEOUT_S = 10.0
SIZE_MAX = 200


class NetnsError(RuntimeError):
    """An `ip` command failed; the message carries the command and its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", *args]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    """None if namespaces, veth pairs and bridges can be made here; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (not root here)"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    tag = secrets.token_hex(2)
    namespace, bridge, veth = (
        f"{NAME_PREFIX}{tag}p",
        f"{NAME_PREFIX}{tag}pb",
        f"{NAME_PREFIX}{tag}pv",
    )
    try:
        _ip("netns", "add", namespace)
        _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "add", veth, "type", "veth", "peer", "name", veth + "x")
        _ip("link", "set", veth + "x", "netns", namespace)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as error:
        return f"cannot make a namespace, bridge and veth pair: {error}"
    finally:
        _ip("link", "del", veth, check=False)
        _ip("link", "del", bridge, check=False)
        _ip("netns", "del", namespace, check=False)
    return None


def _used_subnets() -> set[int]:
    """Third octets of 10.213.x.0/24 subnets already on an interface here."""
    done = _ip("-4", "-o", "addr", "show", check=False)
    prefix = "{}.{}.".format(*SUBNET_FIRST_OCTETS)
    used: set[int] = set()
    for word in done.stdout.split():
        if word.startswith(prefix):
            with contextlib.suppress(ValueError, IndexError):
                used.add(int(word.split(".")[2]))
    return used


class NetnsNetwork:
    """The namespaces, veths and bridge of one cluster, and the faults on them."""

    def __init__(self, size: int, *, tag: str | None = None, cut_mode: CutMode = "drop") -> None:
        if not 1 <= size <= SIZE_MAX:
            raise ValueError(f"size must be in 1..{SIZE_MAX}, got {size}")
        self.size = size
        self.tag = tag if tag is not None else secrets.token_hex(2)
        if len(self.tag) > 6 or not self.tag.isalnum():
            raise ValueError(f"tag must be 1-6 letters or digits, got {self.tag!r}")
        self.cut_mode: CutMode = cut_mode
        self.subnet_octet = -1
        self._cuts: dict[tuple[int, int], CutMode] = {}
        self._unplugged: set[int] = set()
        self._made = False

    # -- names and addresses ------------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.size + 1))

    def namespace(self, node_id: int) -> str:
        return f"{NAME_PREFIX}{self.tag}n{node_id}"

    @property
    def bridge(self) -> str:
        return f"{NAME_PREFIX}{self.tag}br"

    def host_veth(self, node_id: int) -> str:
        return f"{NAME_PREFIX}{self.tag}v{node_id}"

    def node_ip(self, node_id: int) -> str:
        self._check_node(node_id)
        return "{}.{}.{}.{}".format(*SUBNET_FIRST_OCTETS, self.subnet_octet, node_id)

    @property
    def client_ip(self) -> str:
        return "{}.{}.{}.{}".format(*SUBNET_FIRST_OCTETS, self.subnet_octet, CLIENT_HOST)

    def exec_prefix(self, node_id: int) -> list[str]:
        """Prepended to a command line to run it in node `node_id`'s namespace."""
        return ["ip", "netns", "exec", self.namespace(node_id)]

    # -- life cycle ---------------------------------------------------------------------

    def setup(self) -> None:
        """Make the bridge, the namespaces and their links (undone again on failure)."""
        if self._made:
            return
        used = _used_subnets()
        free = [octet for octet in range(1, 255) if octet not in used]
        if not free:
            raise NetnsError("no free 10.213.x.0/24 subnet")
        self.subnet_octet = random.choice(free)
        self._made = True
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.client_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for node_id in self.node_ids:
                namespace, veth = self.namespace(node_id), self.host_veth(node_id)
                _ip("netns", "add", namespace)
                _ip("link", "add", veth, "type", "veth", "peer", "name", veth + "x")
                _ip("link", "set", veth + "x", "netns", namespace)
                _ip("-n", namespace, "link", "set", veth + "x", "name", NODE_INTERFACE)
                _ip(
                    "-n",
                    namespace,
                    "addr",
                    "add",
                    f"{self.node_ip(node_id)}/24",
                    "dev",
                    NODE_INTERFACE,
                )
                _ip("-n", namespace, "link", "set", "lo", "up")
                _ip("-n", namespace, "link", "set", NODE_INTERFACE, "up")
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Remove everything `setup` made (best effort, never raises). Processes still in a
        namespace keep it alive: stop the cluster first."""
        if not self._made:
            return
        for node_id in self.node_ids:
            _ip("link", "del", self.host_veth(node_id), check=False)
            _ip("netns", "del", self.namespace(node_id), check=False)
        _ip("link", "del", self.bridge, check=False)
        self._cuts.clear()
        self._unplugged.clear()
        self._made = False

    def __enter__(self) -> NetnsNetwork:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    # -- faults -------------------------------------------------------------------------

    @property
    def cuts(self) -> set[tuple[int, int]]:
        """(src, dst) pairs whose packets from src to dst are lost now."""
        return set(self._cuts)

    @property
    def unplugged(self) -> set[int]:
        return set(self._unplugged)

    def cut(self, src: int, dst: int, mode: CutMode | None = None) -> None:
        """Lose src's packets to dst (one way); see the module docstring for the modes."""
        self._check_node(src)
        self._check_node(dst)
        if src == dst or (src, dst) in self._cuts:
            return
        how = mode or self.cut_mode
        namespace, target = self.namespace(src), self.node_ip(dst)
        if how == "drop":
            _ip("-n", namespace, "neigh", "replace", target, "lladdr", NOWHERE_MAC,
                "nud", "permanent", "dev", NODE_INTERFACE)  # fmt: skip
        else:
            _ip("-n", namespace, "route", "add", "unreachable", f"{target}/32")
        self._cuts[(src, dst)] = how

    def cut_both(self, a: int, b: int, mode: CutMode | None = None) -> None:
        self.cut(a, b, mode)
        self.cut(b, a, mode)

    def partition(self, groups: Iterable[Iterable[int]], mode: CutMode | None = None) -> None:
        """Cut both ways between every two nodes of different groups."""
        sides = [set(group) for group in groups]
        for index, side in enumerate(sides):
            for other in sides[index + 1 :]:
                for a in side:
                    for b in other:
                        self.cut_both(a, b, mode)

    def isolate(self, node_id: int, mode: CutMode | None = None) -> None:
        """Node `node_id` loses every other node, both ways (clients still reach it)."""
        self.partition([{node_id}, set(self.node_ids) - {node_id}], mode)

    def unplug(self, node_id: int) -> None:
        """Take node `node_id`'s link down: nothing reaches it, nor leaves it."""
        self._check_node(node_id)
        _ip("link", "set", self.host_veth(node_id), "down")
        self._unplugged.add(node_id)

    def plug(self, node_id: int) -> None:
        self._check_node(node_id)
        _ip("link", "set", self.host_veth(node_id), "up")
        self._unplugged.discard(node_id)

    def mend(self, src: int, dst: int) -> None:
        """Undo `cut(src, dst)`."""
        how = self._cuts.pop((src, dst), None)
        if how is None:
            return
        namespace, target = self.namespace(src), self.node_ip(dst)
        if how == "drop":
            _ip("-n", namespace, "neigh", "del", target, "dev", NODE_INTERFACE, check=False)
        else:
            _ip("-n", namespace, "route", "del", "unreachable", f"{target}/32", check=False)

    def heal(self) -> None:
        """Undo every cut and unplug."""
        for src, dst in list(self._cuts):
            self.mend(src, dst)
        for node_id in list(self._unplugged):
            self.plug(node_id)

    def _check_node(self, node_id: int) -> None:
        if not 1 <= node_id <= self.size:
            raise ValueError(f"node id must be in 1..{self.size}, got {node_id}")


class NetnsCluster(LocalCluster):
    """A `LocalCluster` whose node i runs in namespace i of `network`, listening on
    10.A.B.i (`config.host` is not used). Set `network` up before `start()`."""

    def __init__(self, config: LocalClusterConfig, network: NetnsNetwork) -> None:
        if network.size != config.size:
            raise ValueError(f"network of {network.size} nodes for a cluster of {config.size}")
        super().__init__(config)
        self.network = network

    def host_of(self, node_id: int) -> str:
        return self.network.node_ip(node_id)

    @property
    def addresses(self) -> list[str]:
        return [
            f"{self.host_of(node_id)}:{ports.port}"
            for node_id, ports in zip(self.node_ids, self.node_ports, strict=True)
        ]

    def command(self, node_id: int) -> list[str]:
        args = super().command(node_id)
        args[args.index("--host") + 1] = self.host_of(node_id)
        return self.network.exec_prefix(node_id) + args

    def _http_get(self, node_id: int, path: str) -> tuple[int, bytes]:
        ports = self.node_ports[node_id - 1]
        connection = http.client.HTTPConnection(
            self.host_of(node_id), ports.http_port, timeout=HTTP_PROBE_TIMEOUT_S
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


__all__ = [
    "CutMode",
    "NetnsCluster",
    "NetnsError",
    "NetnsNetwork",
    "unavailable_reason",
]
