"""A node's tenant administration: what the admin credential may do (create, rotate,
set quotas, delete, list), credentials at bootstrap and at sign-in, and the exchange of
quota demand between nodes that makes rate quotas cluster-wide.

Changes to tenants are catalog commands, proposed to the metadata group through the node
(`Node.meta_propose`); every node applies them and loads the quotas into its own
`QuotaEnforcer`. The policy itself (token buckets, shares) is pure, in `tenancy`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from spindle.kv import protocol as p
from spindle.kv.catalogstate import CreateKeyspace, CreateTenant, DeleteTenant, SetQuota, SetToken
from spindle.kv.errors import InvalidArgument, NotFound, SpindleError
from spindle.kv.shardmap import (
    DEFAULT_KEYSPACE,
    DEFAULT_SHARDS,
    DEFAULT_TENANT,
    Partitioning,
    check_name,
)
from spindle.kv.tenancy import (
    ADMIN_TENANT,
    Quota,
    demand_share,
    hash_token,
    new_token,
    token_matches,
)

if TYPE_CHECKING:
    from spindle.kv.node import Node

log = logging.getLogger("spindle.node")

QUOTA_REPORT_STALE_S = 1.5
"""A peer's quota demand report counts for this long (three maintenance intervals)."""


class TenantAdmin:
    """Tenants on one node; the node's request handlers for tenant management are these
    methods."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._peer_demand: dict[int, tuple[float, dict[str, int]]] = {}
        """Peer node -> (when received, its last QuotaReport's demand)."""
        self._reports_in_flight: dict[int, asyncio.Future[Any]] = {}
        """At most one QuotaReport on its way to each peer."""
        self._reported_demand = False

    def load_quotas(self) -> None:
        """Give the node's enforcer every tenant's and keyspace's quota from the catalog."""
        quotas = self.node.quotas
        for tenant in self.node.catalog.tenants.values():
            quotas.set_quota(tenant.name, tenant.quota)
            for keyspace_name, quota in tenant.keyspace_quotas.items():
                quotas.set_quota(tenant.name, quota, keyspace_name)

    # -- credentials -----------------------------------------------------------------------

    async def bootstrap_credentials(self) -> dict[str, str]:
        """Create the admin token and the default tenant's token if they do not exist yet
        (on the metadata leader). Returns the tokens created (the only time they exist in
        plain text)."""
        catalog = self.node.catalog
        created: dict[str, str] = {}
        for name in (ADMIN_TENANT, DEFAULT_TENANT):
            if name == ADMIN_TENANT and catalog.admin_token_hash:
                continue
            info = catalog.tenants.get(name)
            if name != ADMIN_TENANT and (info is None or info.token_hash):
                continue
            token = new_token()
            command = SetToken(name, hash_token(token), only_if_unset=True)
            if await self.node.meta_propose(command):
                created[name] = token
        return created

    def authenticate(self, tenant: str, token: str) -> bool:
        catalog = self.node.catalog
        if tenant == ADMIN_TENANT:
            stored = catalog.admin_token_hash
        else:
            info = catalog.tenants.get(tenant)
            stored = info.token_hash if info is not None else ""
        ok = bool(stored) and token_matches(token, stored)
        if not ok:
            self.node.quotas.tenant_usage(tenant).refused += 1
        return ok

    # -- the admin credential's requests ----------------------------------------------------

    def create_tenant(self, tenant: str, request: p.CreateTenant) -> Any:
        if request.quota is not None:
            request.quota.check()
        check_name("tenant", request.name)
        return self._create_tenant(request.name, request.quota)

    async def _create_tenant(self, name: str, quota: Quota | None) -> p.TenantCredentials:
        """Every tenant starts with a `default` keyspace, so a new tenant can write at
        once (over RESP, too)."""
        token = new_token()
        result = await self.node.meta_propose(CreateTenant(name, hash_token(token), quota))
        if isinstance(result, SpindleError):
            raise result
        await self.node.meta_propose(
            CreateKeyspace(
                name, DEFAULT_KEYSPACE, DEFAULT_SHARDS, Partitioning.HASH, if_absent=True
            )
        )
        return p.TenantCredentials(name, token)

    def rotate_token(self, tenant: str, request: p.RotateToken) -> Any:
        if request.tenant != ADMIN_TENANT and request.tenant not in self.node.catalog.tenants:
            raise NotFound(f"tenant {request.tenant!r} does not exist")
        return self._rotate_token(request.tenant)

    async def _rotate_token(self, name: str) -> p.TenantCredentials:
        token = new_token()
        await self.node.meta_propose(SetToken(name, hash_token(token)))
        return p.TenantCredentials(name, token)

    def set_quota(self, tenant: str, request: p.SetQuota) -> Any:
        catalog = self.node.catalog
        if request.tenant not in catalog.tenants:
            raise NotFound(f"tenant {request.tenant!r} does not exist")
        if request.quota is not None:
            request.quota.check()
        if request.keyspace is not None and request.quota is not None:
            catalog.keyspace(request.tenant, request.keyspace)
        return self._set_quota(request)

    async def _set_quota(self, request: p.SetQuota) -> p.TenantSummary:
        await self.node.meta_propose(SetQuota(request.tenant, request.quota, request.keyspace))
        return self.summary(request.tenant)

    def delete_tenant(self, tenant: str, request: p.DeleteTenant) -> Any:
        if request.name == DEFAULT_TENANT:
            raise InvalidArgument("the default tenant cannot be deleted")
        if request.name not in self.node.catalog.tenants:
            raise NotFound(f"tenant {request.name!r} does not exist")
        return self._delete_tenant(request.name)

    async def _delete_tenant(self, name: str) -> bool:
        await self.node.meta_propose(DeleteTenant(name))
        return True

    def list_tenants(self, tenant: str, request: p.ListTenants) -> Any:
        return [self.summary(name) for name in sorted(self.node.catalog.tenants)]

    def summary(self, name: str) -> p.TenantSummary:
        node = self.node
        info = node.catalog.tenants[name]
        owned = [ks for ks in node.catalog.keyspaces.values() if ks.tenant == name]
        return p.TenantSummary(
            name,
            info.quota,
            dict(info.keyspace_quotas),
            sorted(ks.name for ks in owned),
            node.stored_bytes(owned),
            msgspec.structs.asdict(node.quotas.tenant_usage(name)),
        )

    # -- cluster-wide rate quotas -------------------------------------------------------------

    def exchange_quota_demand(self) -> None:
        """Tell every peer how many requests each tenant with a quota sent here since the
        last time, and enforce this node's share of those quotas: its part of the
        tenant's demand across the cluster (`tenancy.demand_share`). A peer's report older
        than `QUOTA_REPORT_STALE_S` no longer counts (a node that died stops claiming)."""
        node = self.node
        quotas = node.quotas
        demand = quotas.take_demand()
        transport = node.transport
        if transport is None or len(node.catalog.nodes) < 2:
            return
        if demand or self._reported_demand:  # also once after demand stops: a zero
            report = p.QuotaReport(id=0, node_id=node.node_id, demand=demand)
            for node_id in node.catalog.nodes:
                address = node.peer_address(node_id)
                pending = self._reports_in_flight.get(node_id)
                if node_id == node.node_id or address is None or pending is not None:
                    continue
                sent = asyncio.ensure_future(transport.forward(address, ADMIN_TENANT, report, bool))
                self._reports_in_flight[node_id] = sent
                sent.add_done_callback(functools.partial(self._report_done, node_id))
        self._reported_demand = bool(demand)
        now = node.host.now()
        fresh = [
            peer_demand
            for received_at, peer_demand in self._peer_demand.values()
            if now - received_at <= QUOTA_REPORT_STALE_S
        ]
        for tenant in quotas.limited_tenants:
            share = demand_share(demand.get(tenant, 0), [d.get(tenant, 0) for d in fresh])
            quotas.set_share(tenant, share)

    def _report_done(self, node_id: int, sent: asyncio.Future[Any]) -> None:
        self._reports_in_flight.pop(node_id, None)
        if not sent.cancelled() and sent.exception() is not None:
            log.debug("quota report to node %d: %s", node_id, sent.exception())

    def quota_report(self, tenant: str, request: p.QuotaReport) -> Any:
        """A peer's demand (a peer-only request)."""
        self._peer_demand[request.node_id] = (self.node.host.now(), dict(request.demand))
        return True
