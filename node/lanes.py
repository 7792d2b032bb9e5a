"""Priority lanes: `rush`, `normal` and `bulk` jobs, one stream each, claimed rush first, none starved.

A slot looks for its next job lane by lane in an order that depends on its turn, counted over the
entries it has taken: turn t looks first at FIRST_LOOK[t % len(FIRST_LOOK)], then at the other
lanes in priority order. With all three lanes full, a slot's claims split 7 : 2 : 1; when a lane is
empty its turns go to the next. A share, not ageing, so the bound holds however long rush traffic
lasts: the head of a lane is taken within `claims_bound(lane)` claims of any one slot (normal 5,
bulk 10). Leases, fencing, retries and the DLQ are the same in every lane, and a retried or
requeued job goes back to its own lane.
"""

from __future__ import annotations

from enum import Enum


class Priority(str, Enum):
    rush = "rush"
    normal = "normal"
    bulk = "bulk"


#: Lanes in priority order.
LANES = (Priority.rush, Priority.normal, Priority.bulk)
_R, _N, _B = LANES
#: The lane each turn of a cycle looks at first: rush 7, normal 2, bulk 1 in 10, normal's two
#: turns five apart so its head never waits for more than five claims.
FIRST_LOOK = (_R, _R, _N, _R, _R, _R, _R, _N, _R, _B)


def lane_order(turn: int) -> tuple[Priority, ...]:
    """The lanes a slot looks at, in order, for the claim it makes on `turn` (0, 1, 2, ...)."""
    first = FIRST_LOOK[turn % len(FIRST_LOOK)]
    return (first,) + tuple(lane for lane in LANES if lane is not first)


def claims_bound(lane: Priority) -> int:
    """The most claims one slot makes, from any turn, until it has looked at `lane` first (so the
    head of that lane, if still there, is taken by then)."""
    n = len(FIRST_LOOK)
    return max(next(k + 1 for k in range(n) if FIRST_LOOK[(start + k) % n] is lane) for start in range(n))


def lane_of(priority: str | None) -> Priority:
    """A job's lane; jobs that name no priority (and every job queued before lanes) are normal."""
    return Priority(priority) if priority else Priority.normal
