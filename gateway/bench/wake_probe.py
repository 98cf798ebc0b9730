"""How long this machine takes to wake a process: the floor under every latency a bench reports.

Two processes bounce one byte over a socket pair, each blocking in `recv` until the other
sends: one round trip is two wake-ups. Measured with both processes on one CPU and with them on
two (the benches pin the gateway and its load to different CPUs, so every hop between them is a
cross-CPU wake-up). On an idle bare-metal machine a round trip takes microseconds; inside a
virtual machine a wake-up that crosses vCPUs can cost a hundred or more, and then no relay,
however lean, adds less than two of them to a request.
"""

from __future__ import annotations

import os
import socket
import statistics
import time

ROUND_TRIPS = 2000


def wake_round_trip_us(
    cpus: tuple[int, int] | None, round_trips: int = ROUND_TRIPS
) -> dict[str, float]:
    """Round trips between two processes pinned to `cpus` (unpinned: None), in microseconds:
    median, p90, p99 and mean (a virtual machine's cross-CPU wake-ups have a long tail). The
    child is forked before it is pinned, so call this while the caller runs no other threads."""
    parent_end, child_end = socket.socketpair()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked echo process
        parent_end.close()
        try:
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[1]})
            while (data := child_end.recv(1)) and data != b"q":
                child_end.send(data)
        finally:
            os._exit(0)
    child_end.close()
    affinity = os.sched_getaffinity(0)
    try:
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[0]})
        samples = []
        for _ in range(round_trips):
            started = time.perf_counter()
            parent_end.send(b"x")
            parent_end.recv(1)
            samples.append(time.perf_counter() - started)
        samples.sort()
        return {
            "p50": round(samples[len(samples) // 2] * 1e6, 1),
            "p90": round(samples[int(len(samples) * 0.9)] * 1e6, 1),
            "p99": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
            "mean": round(statistics.fmean(samples) * 1e6, 1),
        }
    finally:
        os.sched_setaffinity(0, affinity)
        parent_end.send(b"q")
        parent_end.close()
        os.waitpid(child, 0)


def machine_wake_report(cpus: tuple[int, int] | None) -> dict[str, dict[str, float] | None]:
    """Round trips on one CPU and across the two the bench pins to (None: fewer than two)."""
    return {
        "same_cpu_round_trip_us": wake_round_trip_us(None if cpus is None else (cpus[0], cpus[0])),
        "cross_cpu_round_trip_us": None if cpus is None else wake_round_trip_us(cpus),
    }
