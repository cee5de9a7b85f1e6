"""The fair-share choice (jobs/contract/fair.py's Lua pop) against a real Redis: which message a free worker takes
among queued jobs of several owners, limits, priorities, reservations, usage charged at an attempt's end.

No worker processes: jobs are created and moved with the product's own store and delivery calls; the pop is the
one the worker runs. The end-to-end order with real workers is in tests/fault/test_fair_share.py.
"""

from __future__ import annotations

import pytest
import redis

from jobs.contract import keys
from jobs.contract.fair import FairPolicy, fair_pop, parse_owner_limits
from jobs.contract.ids import new_job_id
from jobs.contract.queue import pop, queue_key
from jobs.contract.states import JobState
from jobs.redis.delivery import deliver
from jobs.redis.store import JobStore

Q = keys.rq_queue_name("default", "cpu", "default")
QH = keys.rq_queue_name("default", "cpu", "high")
QUEUES = keys.worker_queue_names(["default"], "cpu", 1)
QKEYS = [queue_key(n) for n in QUEUES]


@pytest.fixture()
def store(r: redis.Redis) -> JobStore:
    return JobStore(r)


def make(store: JobStore, owner: str | None, queue: str = Q) -> str:
    jid = new_job_id()
    fields = {"id": jid, "name": f"job-{owner}", "queue": queue, "attempt": 1, "epochs": 1}
    if owner is not None:
        fields["owner"] = owner
    store.create(jid, fields)
    deliver(store, jid, 1, queue)
    return jid


def run(store: JobStore, jid: str, started_ago_ms: int = 0) -> None:
    """Claim ``jid`` as a worker would (its message, if still queued, is taken off as a pop would)."""
    for q in (Q, QH):
        store.r.lrem(queue_key(q), 0, keys.rq_job_id(jid, 1))
    store.transition(jid, JobState.RUNNING, attempt=1, lease_ttl_ms=60_000, fields={"token": "t", "worker": "w"})
    if started_ago_ms:
        store.r.hset(keys.job(jid), "started_at", store.now_ms() - started_ago_ms)


def take(store: JobStore, policy: FairPolicy | None = None) -> str | None:
    kind, _, rq_id, _ = fair_pop(store.r, QKEYS, policy or FairPolicy())
    return rq_id.rsplit("-a", 1)[0] if kind == "take" and rq_id else kind


def test_fewest_running_devices_first_then_fifo(store: JobStore) -> None:
    a = [make(store, "alice") for _ in range(3)]
    b = make(store, "bob")
    assert take(store) == a[0]  # nobody runs: the oldest
    run(store, a[0])
    assert take(store) == b  # alice runs one, bob none: bob's job passes alice's two older ones
    run(store, b)
    assert take(store) == a[1]  # one each: alice's usage so far (ms) is compared, then FIFO
    assert take(store) == a[2]
    assert take(store) == "empty"


def test_recent_device_time_breaks_ties_and_is_charged_once(store: JobStore) -> None:
    first = make(store, "alice")
    run(store, first, started_ago_ms=60_000)
    store.transition(first, JobState.SUCCEEDED, attempt=1, token="t")
    usage = store.r.zrange(keys.owner_usage("alice"), 0, -1)
    assert len(usage) == 1 and int(usage[0].split(b":")[0]) >= 60_000, usage  # one charge of ~60 s x 1 device
    a2, b1 = make(store, "alice"), make(store, "bob")
    assert take(store) == b1  # nobody runs; alice used a minute recently, bob nothing
    assert take(store) == a2
    assert store.r.zcard(keys.owner_usage("bob")) == 0
    # usage decays: a minute used an hour ago still counts at a 1 h half-life, not at a 1 s one (then FIFO)
    store.r.delete(keys.owner_usage("alice"))
    store.r.zadd(keys.owner_usage("alice"), {b"60000:x:1": store.now_ms() - 3_600_000})
    a3, b2 = make(store, "alice"), make(store, "bob")
    assert take(store) == b2
    make(store, "alice"), make(store, "bob")  # with the default half-life bob's would go first again
    assert take(store, FairPolicy(half_life_s=1)) == a3


def test_priority_comes_before_share(store: JobStore) -> None:
    busy = make(store, "alice")
    run(store, busy)
    b = make(store, "bob")
    hi = make(store, "alice", QH)
    assert take(store) == hi  # the high queue is looked at first, whoever runs what
    assert take(store) == b


def test_owner_limit_skips_without_reordering(store: JobStore) -> None:
    policy = FairPolicy(max_running=1, limits={"carol": 0})
    a1, a2 = make(store, "alice"), make(store, "alice")
    c = make(store, "carol")
    assert take(store, policy) == a1
    # a1 is popped but not claimed yet: its reservation counts, so a second worker does not pass the limit
    assert take(store, policy) == "blocked"
    run(store, a1)
    assert take(store, policy) == "blocked"  # alice at 1 of 1, carol at 0 of 0: nothing may start
    b = make(store, "bob")
    assert take(store, policy) == b
    assert store.r.lrange(queue_key(Q), 0, -1) == [keys.rq_job_id(a2, 1).encode(), keys.rq_job_id(c, 1).encode()]
    store.transition(a1, JobState.SUCCEEDED, attempt=1, token="t")
    assert take(store, policy) == a2  # under the limit again: taken from where it waited


def test_expired_reservation_stops_counting(store: JobStore) -> None:
    a1, a2 = make(store, "alice"), make(store, "alice")
    policy = FairPolicy(max_running=1)
    assert take(store, policy) == a1
    store.r.zadd(keys.FAIR_CLAIMING, {keys.rq_job_id(a1, 1): store.now_ms() - 120_000})  # its worker died
    assert take(store, policy) == a2


def test_head_is_bounded(store: JobStore) -> None:
    busy = make(store, "alice")
    run(store, busy)
    a = [make(store, "alice") for _ in range(3)]
    b = make(store, "bob")
    assert take(store, FairPolicy(head_max=3)) == a[0]  # bob's job is 4th: beyond the examined head
    assert take(store, FairPolicy(head_max=3)) == b


def test_malformed_and_stale_messages_take_the_reject_path(store: JobStore) -> None:
    a = make(store, "alice")
    store.r.lpush(queue_key(Q), b"not-an-rq-id")
    d = pop(store.r, QUEUES, 0.1, FairPolicy())
    assert d is not None and d.message is None and "not-an-rq-id" in (d.error or "")
    store.r.hset(keys.job(a), "attempt", 2)  # the message's attempt is stale: taken at once, the claim drops it
    d = pop(store.r, QUEUES, 0.1, FairPolicy())
    assert d is not None and d.message is not None and d.message.job_id == a
    store.r.set(keys.job("plantedkey"), "x")
    store.r.rpush(queue_key(Q), keys.rq_job_id("plantedkey", 1))
    d = pop(store.r, QUEUES, 0.1, FairPolicy())  # a job key that is no hash: one bad message, not a script error
    assert d is not None and d.rq_id.startswith("plantedkey")


def test_jobs_without_owner_still_run(store: JobStore) -> None:
    old = make(store, None)
    d = pop(store.r, QUEUES, 0.1, FairPolicy(max_running=0, limits={"": 5}))
    assert d is not None and d.message is not None and d.message.job_id == old


def test_empty_queue_blocks_then_takes(store: JobStore) -> None:
    assert pop(store.r, QUEUES, 0.2, FairPolicy()) is None
    a = make(store, "alice")
    d = pop(store.r, QUEUES, 0.2, FairPolicy())
    assert d is not None and d.message is not None and d.message.job_id == a


def test_owner_counts_and_index(store: JobStore) -> None:
    a = make(store, "alice")
    make(store, "alice")
    make(store, "bob")
    run(store, a)
    counts = {k.decode(): int(v) for k, v in store.r.hgetall(keys.IDX_OWNER_COUNTS).items()}
    assert counts == {"queued\talice": 1, "running\talice": 1, "queued\tbob": 1}
    assert store.r.zcard(keys.owner_index("alice")) == 2
    store.transition(a, JobState.SUCCEEDED, attempt=1, token="t")
    store.delete([a])
    assert store.r.zcard(keys.owner_index("alice")) == 1
    assert "running\talice" not in {k.decode() for k in store.r.hgetall(keys.IDX_OWNER_COUNTS)}


def test_parse_owner_limits_names_every_problem() -> None:
    assert parse_owner_limits("") == {}
    with pytest.raises(ValueError) as e:
        parse_owner_limits("alice=1,bob,carol=-1,d e=2,alice=3")
    msg = str(e.value)
    assert all(s in msg for s in ("'bob'", "'carol=-1'", "'d e=2'", "'alice' given twice")), msg


def test_waiting_reason_position_priority_and_limit(store: JobStore) -> None:
    from jobs.ops.waiting import waiting_reason

    def why(jid: str) -> dict[str, object]:
        st = store.get(jid, with_history=False, with_goodput=False)
        w = waiting_reason(store.r, st, store.now_ms(), grace_s=3600)  # a worker's absence is another test's
        assert w is not None
        return w.to_dict()

    a1, a2, b1 = make(store, "alice"), make(store, "alice"), make(store, "bob")
    w = why(b1)
    assert (w["kind"], w["position"], w["queue_length"], w["owner"]) == ("in_queue", 3, 3, "bob"), w
    assert "position 3 of 3" in str(w["message"])
    make(store, "carol", QH)
    make(store, "carol", QH)
    w = why(a2)
    assert (w["kind"], w["ahead_higher"], w["position"]) == ("behind_higher_priority", 2, 2), w
    assert str(w["message"]).startswith("behind 2 job(s) of higher priority"), w
    # the workers enforce alice <= 1 running (their pop records the policy); alice runs a1
    fair_pop(store.r, QKEYS, FairPolicy(max_running=1))
    store.r.delete(keys.FAIR_CLAIMING)
    run(store, a1)
    w = why(a2)
    assert (w["kind"], w["owner_running"], w["owner_limit"]) == ("owner_limit", 1, 1), w
    assert "owner limit reached: alice runs 1 of 1" in str(w["message"])
    store.transition(a1, JobState.SUCCEEDED, attempt=1, token="t")
    assert why(a2)["kind"] != "owner_limit"
    assert waiting_reason(store.r, {"state": "running"}, 0) is None


def test_owners_at_limit_for_the_preemptor(store: JobStore) -> None:
    from jobs.contract.fair import owners_at_limit

    assert owners_at_limit(store.r, {"alice", "bob"}) == set()  # no fair-share worker ran: no limits known
    a = make(store, "alice")
    fair_pop(store.r, QKEYS, FairPolicy(max_running=2, limits={"alice": 1}))  # a worker's pop records its limits
    store.r.delete(keys.FAIR_CLAIMING)
    run(store, a)
    assert owners_at_limit(store.r, {"alice", "bob"}) == {"alice"}
