"""The broker on a real redis-server: idempotent submit, claims and fencing, leases, the stream."""

from __future__ import annotations

import time

import pytest

from node.entries import decode_entry
from node.errors import JobConflict
from node.queue import Fenced, RedisQueue
from node.redis_conn import redact_url
from node.lease import JobLease, job_lease
from node.records import JobState
from tests.fleet.conftest import job_request


def read_and_claim(queue: RedisQueue, owner: str, *, reclaim: bool = False):
    entries = queue.reclaim(owner) if reclaim else queue.read(owner, block_ms=100)
    assert len(entries) == 1, entries
    job = decode_entry(entries[0].fields, max_payload_bytes=65536, max_text_chars=2000)
    return entries[0], queue.claim(entries[0], job, owner=owner, node_id=owner.split("/")[0])


# --- submit ----------------------------------------------------------------------------------------


def test_same_id_and_payload_returns_the_existing_job(queue, media):
    # Given a submitted job
    first = queue.submit(job_request(media, "same"))
    # When the same request comes again
    again = queue.submit(job_request(media, "same"))
    # Then it is the same job, enqueued once
    assert first.created and not again.created
    assert again.video_id == "same" and again.state == "queued"
    assert queue.client.xlen(queue.keys.stream) == 1


def test_same_id_with_another_payload_is_a_clear_error(queue, media):
    queue.submit(job_request(media, "clash"))
    with pytest.raises(JobConflict) as e:
        queue.submit(job_request(media, "clash", strategy="base_video", engine=None))
    assert e.value.code == "idempotency_conflict"
    assert "'clash' already exists (queued) with a different payload" in e.value.message
    assert queue.client.xlen(queue.keys.stream) == 1


def test_an_idempotency_key_alone_names_one_job(queue, media):
    # Given a submit with only an idempotency key (no video_id)
    request = job_request(media, None, idempotency_key="order-42")
    first = queue.submit(request)
    # When it is sent again, and then with another payload
    again = queue.submit(request)
    with pytest.raises(JobConflict):
        queue.submit({**request, "strategy": "base_video", "engine": None})
    # Then both submits name one derived job
    assert first.created and not again.created and again.video_id == first.video_id
    assert first.video_id.startswith("idem_")


def test_an_idempotency_key_cannot_name_two_jobs(queue, media):
    queue.submit(job_request(media, "k-a", idempotency_key="k"))
    with pytest.raises(JobConflict, match="idempotency_key already names job 'k-a'"):
        queue.submit(job_request(media, "k-b", idempotency_key="k"))


def test_submit_validates_before_enqueueing(queue, media):
    from node.errors import InvalidInput

    with pytest.raises(InvalidInput) as e:
        queue.submit(job_request(media, "bad", colour="red"))
    assert e.value.code == "unknown_field"
    with pytest.raises(InvalidInput) as e:
        queue.submit({"video_id": "big", "text": "x" * 70_000})
    assert e.value.code == "text_too_long"
    assert queue.client.exists(queue.keys.stream) == 0


# --- claims and fencing ----------------------------------------------------------------------------


def test_a_claim_gets_a_token_and_the_commit_acks_the_entry(queue, media):
    # Given a queued job
    queue.submit(job_request(media, "c1"))
    # When a consumer claims it and commits
    entry, outcome = read_and_claim(queue, "n1/0")
    assert outcome.kind == "claimed" and outcome.claim.token == 1 and outcome.claim.attempts == 1
    assert queue.pending_count() == 1
    assert queue.record("c1").state is JobState.running
    assert queue.finish(outcome.claim, "succeeded", result={"output": "out/c1/1.mp4"}) is Fenced.written
    # Then the entry is acked in the same step and the record holds the result
    record = queue.record("c1")
    assert queue.pending_count() == 0
    assert record.state is JobState.succeeded and record.output == "out/c1/1.mp4"
    assert [(a.token, a.node, a.outcome) for a in record.history] == [(1, "n1", "succeeded")]
    # and a replay of the same commit (a lost reply) is recognised, not refused
    assert queue.finish(outcome.claim, "succeeded", result={"output": "x"}) is Fenced.replayed
    assert queue.record("c1").output == "out/c1/1.mp4"


def test_a_stale_holder_can_never_overwrite_the_new_holders_result(fleet_settings, media):
    # Given node A's claim, whose lease then expires while A is paused
    queue = RedisQueue(fleet_settings.model_copy(update={"job_lock_timeout": 0.3}))
    queue.submit(job_request(media, "f1"))
    _, a = read_and_claim(queue, "A/0")
    time.sleep(0.45)
    # When node B reclaims the entry, claims the job and commits
    _, b = read_and_claim(queue, "B/0", reclaim=True)
    assert b.kind == "claimed" and b.claim.token == a.claim.token + 1
    assert queue.finish(b.claim, "succeeded", result={"output": "out/f1/2.mp4"}) is Fenced.written
    # Then every write A still tries with its old token is refused, and counted
    assert queue.finish(a.claim, "succeeded", result={"output": "out/f1/1.mp4"}) is Fenced.refused
    assert queue.heartbeat(a.claim, extend=False, progress={"done": 1, "total": 2}) is Fenced.refused
    assert queue.heartbeat(b.claim) is Fenced.replayed  # B's own late renewal: done, not refused
    assert queue.finish(a.claim, "released") is Fenced.refused
    record = queue.record("f1")
    assert record.output == "out/f1/2.mp4" and record.committed_token == 2
    assert [(a.node, a.outcome) for a in record.history] == [("A", "lease_expired"), ("B", "succeeded")]
    assert queue.refusals() == {"A|commit": 1, "A|progress": 1, "A|finish": 1}


def test_a_live_lease_is_not_taken_over(fleet_settings, media):
    # Given a claim kept alive by its heartbeat past several lease timeouts
    queue = RedisQueue(fleet_settings.model_copy(update={"job_lock_timeout": 0.3}))
    queue.submit(job_request(media, "live"))
    entry, a = read_and_claim(queue, "A/0")
    with job_lease(queue, a.claim) as lease:
        time.sleep(1.0)
        # When another node looks for expired entries
        reclaimed = queue.reclaim("B/0")
        # Then there are none, and the lease still holds
        assert reclaimed == [] and not lease.lost
        # and a claim forced on the entry finds the lease busy
        job = decode_entry(entry.fields, max_payload_bytes=65536, max_text_chars=100)
        assert queue.claim(entry, job, owner="B/0", node_id="B").kind == "busy"
    assert queue.finish(a.claim, "succeeded", result={"output": "o"}) is Fenced.written


def test_a_superseded_lease_reports_lost(fleet_settings, media):
    queue = RedisQueue(fleet_settings.model_copy(update={"job_lock_timeout": 0.3}))
    queue.submit(job_request(media, "sup"))
    _, a = read_and_claim(queue, "A/0")
    time.sleep(0.45)
    read_and_claim(queue, "B/0", reclaim=True)
    lease = JobLease(queue, a.claim, 60.0)  # by its own clock A still has time...
    assert lease.renew() is False  # ...but Redis says the token is stale
    assert lease.lost and "superseded" in lease.lost_reason


def test_a_lease_without_confirmed_renewal_expires_locally(queue, media):
    # Given a claim and a clock that jumps past the lease (the process was paused)
    queue.submit(job_request(media, "paused"))
    _, a = read_and_claim(queue, "A/0")
    now = [a.claim.claimed_at]
    lease = JobLease(queue, a.claim, 2.0, clock=lambda: now[0])
    assert not lease.lost
    now[0] += 2.5
    # Then the lease is lost before any Redis call says so
    assert lease.lost and "no renewal confirmed" in lease.lost_reason


def test_release_requeues_without_counting_the_attempt(queue, media):
    queue.submit(job_request(media, "rel"))
    _, a = read_and_claim(queue, "A/0")
    assert queue.finish(a.claim, "released", error={"code": "cancelled", "message": "drain",
                                                      "retryable": True}) is Fenced.written
    record = queue.record("rel")
    assert record.state is JobState.queued and record.attempts == 0
    # the job is readable again at once, by any node
    _, b = read_and_claim(queue, "B/0")
    assert b.claim.token == 2 and b.claim.attempts == 1
    assert [a.outcome for a in queue.record("rel").history] == ["released", "running"]


def test_crashed_holders_use_up_the_attempts(fleet_settings, media):
    # Given MAX_JOB_ATTEMPTS=2 and two holders that die silently
    queue = RedisQueue(fleet_settings.model_copy(update={"job_lock_timeout": 0.2, "max_job_attempts": 2}))
    queue.submit(job_request(media, "crashy"))
    read_and_claim(queue, "A/0")
    time.sleep(0.3)
    read_and_claim(queue, "B/0", reclaim=True)
    time.sleep(0.3)
    # When a third node finds the entry expired again
    _, c = read_and_claim(queue, "C/0", reclaim=True)
    # Then the job fails into the DLQ instead of crashing a third node
    assert c.kind == "exhausted"
    record = queue.record("crashy")
    assert record.state is JobState.failed and record.error["code"] == "lease_expired"
    assert [a.outcome for a in record.history] == ["lease_expired", "lease_expired"]
    assert [vid for vid, _ in queue.index("dlq")] == ["crashy"] and queue.pending_count() == 0


def test_retry_waits_in_the_delayed_set_then_returns_to_the_stream(queue, media):
    queue.submit(job_request(media, "later"))
    _, a = read_and_claim(queue, "A/0")
    queue.finish(a.claim, "retry", error={"code": "render_failed", "message": "x", "retryable": True}, delay_s=0.3)
    assert queue.record("later").state is JobState.retrying
    assert queue.promote_due() == 0  # not due yet
    time.sleep(0.35)
    assert queue.promote_due() == 1 and queue.promote_due() == 0  # moved exactly once
    _, b = read_and_claim(queue, "B/0")
    assert b.claim.token == 2 and b.claim.attempts == 2


# --- the stream ------------------------------------------------------------------------------------


def test_trimming_never_drops_a_pending_or_undelivered_entry(queue, media):
    # Given five entries: two committed, one pending (claimed), two never delivered
    for i in range(5):
        queue.submit(job_request(media, f"tr{i}"))
    claims = [read_and_claim(queue, "A/0")[1].claim for _ in range(3)]
    for c in claims[:2]:
        queue.finish(c, "succeeded", result={"output": "o"})
    # When the stream is trimmed
    assert queue.trim_stream(dry_run=True)[0] == 2 and queue.client.xlen(queue.keys.stream) == 5
    dropped, _ = queue.trim_stream()
    # Then only the two acked entries went
    assert dropped == 2 and queue.client.xlen(queue.keys.stream) == 3
    assert queue.pending_count() == 1
    # and once the pending one is committed, trimming keeps the undelivered two, still readable
    queue.finish(claims[2], "succeeded", result={"output": "o"})
    assert queue.trim_stream()[0] == 1
    assert [read_and_claim(queue, "B/0")[1].claim.video_id for _ in range(2)] == ["tr3", "tr4"]


def test_redis_url_password_is_redacted_for_logs():
    assert redact_url("rediss://worker:s3cret@redis.example:6380/0") == "rediss://worker:***@redis.example:6380/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_an_unreachable_redis_is_one_retryable_error(fleet_settings):
    from node.errors import QueueUnavailable
    from tests.fleet.conftest import free_port

    queue = RedisQueue(fleet_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                                         "redis_socket_timeout_s": 0.5}))
    with pytest.raises(QueueUnavailable) as e:
        queue.read("A/0", block_ms=10)
    assert e.value.retryable and e.value.code == "queue_unavailable"


def test_an_entry_read_while_draining_is_given_back_at_once(queue, media):
    # Given an entry delivered to a node that began draining before claiming it
    queue.submit(job_request(media, "handback"))
    [entry] = queue.read("A/0", block_ms=100)
    # When the node gives it back
    assert queue.unread(entry, "handback") is True
    # Then nothing is pending on the draining node and another node reads the job now
    assert queue.pending_count() == 0
    _, b = read_and_claim(queue, "B/0")
    assert b.kind == "claimed" and b.claim.entry_id != entry.entry_id
    # and a second hand-back of the old entry changes nothing
    assert queue.unread(entry, "handback") is False


def test_generation_ids_live_on_the_job_record(queue, fleet_settings):
    # Given a provider generation stored by one node for a queued job
    from node.generations import RedisGenerationStore

    queue.submit({"video_id": "gen1", "text": "hola"})
    RedisGenerationStore(fleet_settings, queue.client).put("gen1", "synclabs", "gen_42")
    # Then any other node (another store, same Redis) finds it, and other providers find none
    other = RedisGenerationStore(fleet_settings, queue.client)
    assert other.get("gen1", "synclabs") == "gen_42"
    assert other.get("gen1", "heygen") is None and other.get("nope", "synclabs") is None
