"""The pure tenancy policy: token buckets, quota admission, weighted fair queuing."""

from __future__ import annotations

from collections import Counter

import pytest

from spindle.kv.errors import InvalidArgument, Throttled
from spindle.kv.tenancy import (
    DEFAULT_WEIGHT,
    FairQueue,
    Quota,
    QuotaEnforcer,
    TokenBucket,
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
