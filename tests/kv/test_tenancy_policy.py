"""The pure tenancy policy: token buckets, quota admission, weighted fair queuing."""

from __future__ import annotations

from collections import Counter

import pytest

from spindle.kv.errors import InvalidArgument, Throttled
from spindle.kv.tenancy import (
    DEFAULT_WEIGHT,
    QUOTA_SHARE_MIN,
    FairQueue,
    Quota,
    QuotaEnforcer,
    TokenBucket,
    demand_share,
    hash_token,
    new_token,
    token_matches,
)


def test_token_bucket_rate_and_burst() -> None:
    bucket = TokenBucket(rate_per_s=10, burst_s=1.0, now_s=0.0)
    assert all(bucket.take(1, 0.0) == 0.0 for _ in range(10)), "a full burst goes at once"
    wait = bucket.take(1, 0.0)
    assert wait == pytest.approx(0.1)
    assert bucket.take(1, 0.1) == 0.0
    granted = sum(bucket.take(1, 0.1 + i * 0.01) == 0.0 for i in range(1, 101))
    assert granted == 10, "one second later, about rate x 1 s more"


def test_token_bucket_large_request_runs_into_debt() -> None:
    bucket = TokenBucket(rate_per_s=100, burst_s=1.0, now_s=0.0)
    assert bucket.take(1000, 0.0) == 0.0, "bigger than the bucket: allowed when full"
    assert bucket.take(1, 0.0) > 0, "then the debt must be paid"
    assert bucket.take(1, 5.0) > 0
    assert bucket.take(1, 9.1) == 0.0


def test_quota_enforcer_throttles_with_retry_after_and_counts() -> None:
    now = [0.0]
    quotas = QuotaEnforcer(lambda: now[0])
    quotas.set_quota("a", Quota(write_ops_per_s=5))
    for _ in range(5):
        quotas.admit_write("a", "ks", 10)
    with pytest.raises(Throttled) as caught:
        quotas.admit_write("a", "ks", 10)
    assert caught.value.detail["retry_after_ms"] == 200
    assert quotas.tenant_usage("a").throttled == 1
    quotas.admit_write("b", "ks", 10**6), "no quota, no limit"
    now[0] = 0.2
    quotas.admit_write("a", "ks", 10)


def test_demand_share_is_this_nodes_part_of_the_tenants_demand() -> None:
    assert demand_share(0, []) == 1.0, "nobody saw demand: the whole quota"
    assert demand_share(0, [0, 0]) == 1.0
    assert demand_share(30, []) == 1.0
    assert demand_share(30, [30, 30]) == pytest.approx(1 / 3)
    assert demand_share(200, [100]) == pytest.approx(2 / 3)
    assert demand_share(0, [500]) == QUOTA_SHARE_MIN, "never shut out entirely"


def test_a_share_scales_every_bucket_of_the_tenant_and_survives_quota_changes() -> None:
    now = [0.0]
    quotas = QuotaEnforcer(lambda: now[0])
    quotas.set_quota("a", Quota(write_ops_per_s=100, burst_s=1))
    quotas.set_quota("a", Quota(write_ops_per_s=40, burst_s=1), keyspace="ks")
    quotas.set_quota("b", Quota(write_ops_per_s=100, burst_s=1))
    quotas.set_share("a", 0.25)
    admitted = 0
    for _ in range(100):
        try:
            quotas.admit_write("a", "other", 1)
            admitted += 1
        except Throttled:
            pass
    assert admitted == 25, "a quarter of the tenant's burst of 100"
    assert sum(1 for _ in range(10) if _admits(quotas, "a", "ks")) == 0, "its keyspace too"
    now[0] = 1.0
    assert sum(1 for _ in range(40) if _admits(quotas, "a", "ks")) == 10, "40/s x 0.25"
    assert all(_admits(quotas, "b", "ks") for _ in range(100)), "another tenant: whole quota"
    quotas.set_quota("a", Quota(write_ops_per_s=200, burst_s=1))  # rebuilt at the share
    now[0] = 10.0
    assert sum(1 for _ in range(200) if _admits(quotas, "a", "other")) == 50
    assert quotas.take_demand() == {"a": 350, "b": 100}, "requests arrived, admitted or not"
    assert quotas.take_demand() == {}
    quotas.set_share("a", 1.0)
    assert quotas.share("a") == 1.0


def _admits(quotas: QuotaEnforcer, tenant: str, keyspace: str) -> bool:
    try:
        quotas.admit_write(tenant, keyspace, 1)
    except Throttled:
        return False
    return True


def test_quota_changes_at_run_time_and_per_keyspace() -> None:
    now = [0.0]
    quotas = QuotaEnforcer(lambda: now[0])
    quotas.set_quota("a", Quota(read_ops_per_s=2, burst_s=1))
    quotas.admit_read("a", "x")
    quotas.admit_read("a", "x")
    with pytest.raises(Throttled):
        quotas.admit_read("a", "x")
    quotas.set_quota("a", Quota(read_ops_per_s=1000, burst_s=1))
    with pytest.raises(Throttled):
        quotas.admit_read("a", "x")  # the tenant keeps its standing: the bucket is empty
    now[0] = 0.01
    for _ in range(10):
        quotas.admit_read("a", "x")
    quotas.set_quota("a", None)
    quotas.set_quota("a", Quota(write_bytes_per_s=100), keyspace="small")
    quotas.admit_write("a", "big", 10_000)
    quotas.admit_write("a", "small", 100)
    with pytest.raises(Throttled, match="write bytes/s"):
        quotas.admit_write("a", "small", 1)


def test_read_bytes_are_charged_after_the_read() -> None:
    now = [0.0]
    quotas = QuotaEnforcer(lambda: now[0])
    quotas.set_quota("a", Quota(read_bytes_per_s=1000))
    quotas.admit_read("a", None)
    quotas.charge_read_bytes("a", None, 5000)
    with pytest.raises(Throttled, match="read bytes/s"):
        quotas.admit_read("a", None)
    now[0] = 4.1
    quotas.admit_read("a", None)
    assert quotas.tenant_usage("a").read_bytes == 5000


@pytest.mark.parametrize(
    "quota",
    [
        Quota(read_ops_per_s=0),
        Quota(write_bytes_per_s=-1),
        Quota(stored_bytes=-5),
        Quota(burst_s=0),
    ],
)
def test_bad_quotas_are_refused(quota: Quota) -> None:
    with pytest.raises(InvalidArgument):
        QuotaEnforcer(lambda: 0.0).set_quota("a", quota)


def test_fair_queue_serves_in_proportion_to_weight() -> None:
    weights = {"big": 300.0, "small": 100.0, "flood": DEFAULT_WEIGHT}
    queue: FairQueue[str] = FairQueue(lambda tenant: weights[tenant])
    for i in range(3000):
        queue.push("flood", f"f{i}")
    for i in range(1000):
        queue.push("big", f"b{i}")
        queue.push("small", f"s{i}")
    served = Counter(queue.pop()[0] for _ in range(1000))
    assert served["b"] == pytest.approx(3 * served["s"], rel=0.1)
    assert served["f"] == pytest.approx(served["s"], rel=0.1)


def test_fair_queue_quiet_tenant_waits_at_most_about_one_round() -> None:
    queue: FairQueue[str] = FairQueue(lambda tenant: DEFAULT_WEIGHT)
    for i in range(10_000):
        queue.push("flood", f"f{i}")
    for _ in range(50):
        queue.pop()
    queue.push("quiet", "q")
    position = next(i for i in range(10_000) if queue.pop() == "q")
    assert position <= 16, position
    assert len(queue) == 10_000 - 50 - position


def test_tokens_are_stored_hashed() -> None:
    token = new_token()
    stored = hash_token(token)
    assert token not in stored
    assert token_matches(token, stored)
    assert not token_matches(token + "x", stored)
    assert hash_token(token) != stored, "salted"
