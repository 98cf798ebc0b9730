"""What the fleet bench's traffic allows: loads per 1,000 requests for caches replayed offline.

`turnout bench fleet` compares Turnout's loads with round-robin's. How low any policy could go
on the same requests depends on the traffic itself: each distinct adapter loads at least once,
and a fleet of B backends with R resident slots each holds at most B x R versions at a time.
These bounds replay the bench's request sequence, one request at a time (no concurrency, no
load time), against one pool of all B x R slots (no partitioning over backends, no replicas):

- `first_loads`: one load per distinct adapter, the floor for every policy;
- `optimal`: Belady's rule (evict the version asked for again furthest in the future), the
  fewest loads possible with those slots, knowing the future;
- `lfu_with_history`: evict the fewest-requested version, counting every request since the
  start (evicted versions keep their counts; ties go to the least recently used): the best a
  frequency-based online policy does on Zipf traffic with perfect memory;
- `lru`: evict the least recently used.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from collections.abc import Sequence

_NEVER = 1 << 62


def optimal_loads(sequence: Sequence[str], slots: int) -> int:
    """Belady's MIN: loads when the version evicted is the one asked for furthest ahead."""
    upcoming = [_NEVER] * len(sequence)
    seen: dict[str, int] = {}
    for index in range(len(sequence) - 1, -1, -1):
        upcoming[index] = seen.get(sequence[index], _NEVER)
        seen[sequence[index]] = index
    next_use: dict[str, int] = {}
    furthest: list[tuple[int, str]] = []  # (-next use, version); stale entries skipped
    loads = 0
    for index, version in enumerate(sequence):
        if version not in next_use:
            loads += 1
            if len(next_use) >= slots:
                while True:
                    negated, victim = heapq.heappop(furthest)
                    if next_use.get(victim) == -negated:
                        del next_use[victim]
                        break
        next_use[version] = upcoming[index]
        heapq.heappush(furthest, (-upcoming[index], version))
    return loads


def lfu_with_history_loads(sequence: Sequence[str], slots: int) -> int:
    """Loads when the resident version with the fewest requests so far is evicted."""
    requests: Counter[str] = Counter()
    resident: dict[str, int] = {}  # version -> index of its last request
    coldest: list[tuple[int, int, str]] = []  # (requests, last request, version); stale skipped
    loads = 0
    for index, version in enumerate(sequence):
        requests[version] += 1
        if version not in resident:
            loads += 1
            if len(resident) >= slots:
                while True:
                    count, last, victim = heapq.heappop(coldest)
                    if resident.get(victim) == last and requests[victim] == count:
                        del resident[victim]
                        break
        resident[version] = index
        heapq.heappush(coldest, (requests[version], index, version))
    return loads


def lru_loads(sequence: Sequence[str], slots: int) -> int:
    resident: OrderedDict[str, None] = OrderedDict()
    loads = 0
    for version in sequence:
        if version in resident:
            resident.move_to_end(version)
            continue
        loads += 1
        if len(resident) >= slots:
            resident.popitem(last=False)
        resident[version] = None
    return loads


def load_bounds(sequence: Sequence[str], slots: int) -> dict[str, float]:
    """Each bound in loads per 1,000 requests of `sequence`, with `slots` pooled slots."""

    def per_1000(loads: int) -> float:
        return round(loads * 1000 / len(sequence), 1) if sequence else 0.0

    return {
        "slots": slots,
        "first_loads": per_1000(len(set(sequence))),
        "optimal": per_1000(optimal_loads(sequence, slots)),
        "lfu_with_history": per_1000(lfu_with_history_loads(sequence, slots)),
        "lru": per_1000(lru_loads(sequence, slots)),
    }
