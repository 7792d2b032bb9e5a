"""Priority lanes on a real Redis: rush first, no starvation within the stated bound, and the same
leases, retries, recovery and DLQ in every lane."""

from __future__ import annotations

import threading
import time

import pytest

from node.entries import canonical_payload
from node.errors import InvalidInput, RenderFailed
from node.job import parse_job
from node.lanes import FIRST_LOOK, LANES, Priority, claims_bound, lane_order
from node.records import JobState
from tests.fleet.conftest import job_request, wait_for
from tests.fleet.test_worker import FakeResult


def lanes_read(queue, consumer: str, n: int) -> list[str]:
    """video_ids of the next n entries `consumer` reads (each claimed, so the record follows)."""
    out = []
    for _ in range(n):
        entries = queue.read(consumer, block_ms=1)
        assert len(entries) == 1, f"expected an entry after {out}"
        out.append(parse_job_of(entries[0]).video_id)
    return out


def parse_job_of(entry):
    import json

    return parse_job(json.loads(entry.fields[b"payload"]))


def test_lane_order_gives_every_lane_its_share_of_a_cycle():
    firsts = [lane_order(turn)[0] for turn in range(len(FIRST_LOOK))]
    assert [firsts.count(lane) for lane in LANES] == [7, 2, 1]
    assert all(sorted(lane_order(t)) == sorted(LANES) for t in range(len(FIRST_LOOK)))
    # the documented bounds: a lane's head is taken within this many claims of one slot
    assert [claims_bound(lane) for lane in LANES] == [2, 5, 10]


def test_a_priority_outside_the_lanes_is_invalid_input_and_none_keeps_the_payload():
    with pytest.raises(InvalidInput) as e:
        parse_job({"video_id": "x", "text": "hola", "priority": "urgent"})
    assert e.value.code == "invalid_priority"
    # Jobs that name no priority serialise as they did before lanes (their payload hash is stable)
    assert "priority" not in canonical_payload(parse_job({"video_id": "x", "text": "hola"}))


def test_rush_is_claimed_first_then_normal_then_bulk_in_the_cycles_proportions(queue, media):
    # Given a backlog submitted bulk first, then normal, then rush
    for lane in ("bulk", "normal", "rush"):
        for k in range(4):
            queue.submit(job_request(media, f"{lane}-{k}", priority=None if lane == "normal" else lane))
    # When one slot takes them all
    order = lanes_read(queue, "slot-a", 12)
    # Then rush comes first but for normal's turn (2); bulk waits until the others are empty
    assert order == ["rush-0", "rush-1", "normal-0", "rush-2", "rush-3", "normal-1", "normal-2",
                     "normal-3", "bulk-0", "bulk-1", "bulk-2", "bulk-3"]
    assert queue.read("slot-a", block_ms=1) == []


def test_bulk_and_normal_are_never_starved_by_rush_traffic(queue, media):
    # Given a slot part-way through its cycle, and then a bulk and a normal job waiting behind more
    # rush jobs than a cycle
    for k in range(3):
        queue.submit(job_request(media, f"warm-{k}", priority="rush"))
    lanes_read(queue, "slot-b", 3)
    queue.submit(job_request(media, "bulk-0", priority="bulk"))
    queue.submit(job_request(media, "normal-0"))
    for k in range(2 * len(FIRST_LOOK)):
        queue.submit(job_request(media, f"rush-{k}", priority="rush"))
    # Then both are taken within their lane's bound of this slot's claims (node/lanes.py)
    order = lanes_read(queue, "slot-b", claims_bound(Priority.bulk))
    assert order.index("normal-0") < claims_bound(Priority.normal)
    assert "bulk-0" in order


def test_a_slot_waiting_on_empty_lanes_wakes_for_any_lane(queue, media):
    queue.ensure_group()
    later = threading.Timer(0.3, lambda: queue.submit(job_request(media, "late-bulk", priority="bulk")))
    later.start()
    started = time.monotonic()
    entries = queue.read("slot-c", block_ms=5000)
    later.join()
    assert [e.lane for e in entries] == [Priority.bulk] and time.monotonic() - started < 4


def test_entries_that_reach_several_lanes_during_a_wait_are_given_back_but_one(queue, media, monkeypatch):
    # Given entries in two lanes that the non-blocking look missed (they arrived just after it)
    queue.submit(job_request(media, "b", priority="bulk"))
    queue.submit(job_request(media, "r", priority="rush"))
    monkeypatch.setitem(queue._scripts, "read", lambda keys, args: [])
    before = queue.client.hget(queue.keys.job("b"), "entry_id")
    # When the blocking read returns both
    entries = queue.read("slot-d", block_ms=100)
    # Then the slot keeps the rush one, and the bulk one is back on its lane for any slot at once
    assert [parse_job_of(e).video_id for e in entries] == ["r"]
    assert queue.client.hget(queue.keys.job("b"), "entry_id") != before
    assert queue.pending_count() == 1  # only the kept entry waits on this slot
    monkeypatch.undo()
    assert [parse_job_of(e).video_id for e in queue.read("slot-e", block_ms=1)] == ["b"]


def test_a_crashed_holder_in_the_bulk_lane_is_recovered_in_that_lane(queue, media, fleet_settings):
    # Given a bulk job claimed by a slot that then dies (no heartbeat, no finish)
    queue.submit(job_request(media, "orphan", priority="bulk"))
    entry = queue.read("dead-slot", block_ms=1)[0]
    first = queue.claim(entry, parse_job_of(entry), owner="dead-slot", node_id="n1").claim
    assert first.lane is Priority.bulk
    # When its lease runs out, another slot reclaims the entry from the bulk lane and claims it
    time.sleep(fleet_settings.job_lock_timeout + 0.2)
    reclaimed = queue.reclaim("live-slot")
    assert [e.lane for e in reclaimed] == [Priority.bulk]
    second = queue.claim(reclaimed[0], parse_job_of(reclaimed[0]), owner="live-slot", node_id="n2").claim
    # Then it is the same job under a new token, and the dead holder is fenced off
    assert (second.video_id, second.token) == ("orphan", first.token + 1)
    assert queue.finish(first, "succeeded", result={"output": "x"}).value == "refused"
    assert queue.finish(second, "succeeded", result={"output": "y"}).value == "written"
    assert queue.pending_count() == 0 and queue.record("orphan").lane == "bulk"


def test_retries_and_dlq_retries_go_back_to_the_jobs_own_lane(queue, media, start_worker, fleet_settings):
    # Given a rush job whose render fails on its first attempt and a bulk job that is dead
    calls: dict[str, int] = {}

    def flaky(job, output, progress, should_stop):
        if job.video_id == "bulk-dead":
            raise InvalidInput("avatar_not_found", "no such avatar")
        calls[job.video_id] = calls.get(job.video_id, 0) + 1
        if calls[job.video_id] == 1:
            raise RenderFailed("first try fails")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"video")
        return FakeResult()

    queue.submit(job_request(media, "rush-retry", priority="rush"))
    start_worker(flaky)
    record = wait_for(lambda: (r := queue.record("rush-retry")) and r.terminal and r, 20, "the rush job")
    # Then the retry ran from the rush stream (the normal stream never saw the job) and succeeded
    assert record.state is JobState.succeeded and record.attempts == 2 and record.lane == "rush"
    assert queue.client.xlen(queue.keys.streams[Priority.rush]) == 2
    assert queue.client.xlen(queue.keys.stream) == 0
    # And a DLQ retry of a bulk job re-enters the bulk lane
    queue.submit(job_request(media, "bulk-dead", priority="bulk"))
    dead = wait_for(lambda: (r := queue.record("bulk-dead")) and r.terminal and r, 20, "the bulk job")
    assert dead.state is JobState.dead and dead.lane == "bulk"
    bulk_entries = queue.client.xlen(queue.keys.streams[Priority.bulk])
    queue.dlq_retry("bulk-dead")
    assert queue.client.xlen(queue.keys.streams[Priority.bulk]) == bulk_entries + 1
