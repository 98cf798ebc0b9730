"""`turnout bench streaming`: its stub paces events as asked, its client counts and times them,
and the whole command reports real numbers at a tiny scale."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from gateway.bench.stream_load import run_streams
from gateway.bench.stream_stub import serve
from gateway.bench.wake_probe import machine_wake_report, wake_round_trip_us
from gateway.serving.embedded_vllm import free_port


async def _against_stub(
    chunks: int, interval_s: float, streams: int, steady_s: float = 0.0, pooled: bool = False
) -> dict[str, object]:
    port = free_port()
    server = asyncio.create_task(serve("127.0.0.1", port, chunks, interval_s))
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        return await run_streams(
            f"http://127.0.0.1:{port}/v1/chat/completions", "bench@v1", streams, 30,
            steady_s=steady_s, pooled=pooled,
        )  # fmt: skip
    finally:
        server.cancel()


def test_paced_streams_are_counted_and_their_gaps_are_the_interval() -> None:
    report = asyncio.run(_against_stub(chunks=6, interval_s=0.03, streams=4))
    assert report["errors"] == 0
    assert report["events"] == 4 * 6
    # Gaps are measured, not assumed: paced 30 ms apart, they cannot be shorter than ~25 ms.
    assert 25 <= report["gap_p50_ms"] <= report["gap_max_ms"]  # type: ignore[operator]
    assert 0 < report["first_event_p50_ms"] < 30  # type: ignore[operator]


def test_unpaced_streams_arrive_back_to_back() -> None:
    report = asyncio.run(_against_stub(chunks=40, interval_s=0.0, streams=3))
    assert report["errors"] == 0
    assert report["events"] == 3 * 40
    assert report["gap_p50_ms"] < 5  # type: ignore[operator]


def test_steady_arrivals_start_twice_the_streams_at_an_even_pace() -> None:
    # 4 streams of 5 events 20 ms apart (0.1 s each): 8 start 25 ms apart, the last at 175 ms,
    # so the level lasts at least 0.275 s; all at once it would last about 0.1 s.
    report = asyncio.run(_against_stub(chunks=5, interval_s=0.02, streams=4, steady_s=0.1))
    assert report["errors"] == 0
    assert report["streams"] == 8
    assert report["events"] == 8 * 5
    assert report["wall_s"] >= 0.27  # type: ignore[operator]
    burst = asyncio.run(_against_stub(chunks=5, interval_s=0.02, streams=4))
    assert burst["streams"] == 4
    assert burst["wall_s"] < 0.27  # type: ignore[operator]


def test_pooled_streams_reuse_kept_alive_connections() -> None:
    # 8 streams of 5 events 20 ms apart start 25 ms apart: about 4 are open at any moment, so a
    # pool needs about 4 connections, while fresh connections are one per stream.
    pooled = asyncio.run(
        _against_stub(chunks=5, interval_s=0.02, streams=4, steady_s=0.1, pooled=True)
    )
    assert pooled["errors"] == 0
    assert pooled["events"] == 8 * 5
    assert 1 <= pooled["connections_opened"] < 8  # type: ignore[operator]
    fresh = asyncio.run(_against_stub(chunks=5, interval_s=0.02, streams=4, steady_s=0.1))
    assert fresh["errors"] == 0
    assert fresh["connections_opened"] == 8


def test_the_wake_probe_times_round_trips_between_two_processes() -> None:
    timings = wake_round_trip_us((0, 0), round_trips=200)
    assert 0 < timings["p50"] <= timings["p90"] <= timings["p99"]
    assert timings["mean"] > 0
    assert machine_wake_report(None)["cross_cpu_round_trip_us"] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arrivals", "layout", "connections", "started"),
    [("burst", "split", "fresh", 1), ("steady", "shared", "pooled", 2)],
)
def test_bench_streaming_reports_every_relayed_event(
    arrivals: str, layout: str, connections: str, started: int
) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "gateway.cli", "bench", "streaming",
            "--streams", "1,8", "--chunks", "5", "--interval-ms", "10", "--json",
            "--arrivals", arrivals, "--layout", layout, "--connections", connections,
        ],
        capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    levels = [json.loads(line) for line in done.stdout.splitlines()]
    assert [level["streams"] for level in levels] == [1, 8]
    for level in levels:
        assert (level["arrivals"], level["layout"], level["connections"]) == (
            arrivals, layout, connections,
        )  # fmt: skip
        # Steady arrivals start twice the level's streams, so that many stay open.
        assert (
            level["gateway"]["streams"] == level["direct"]["streams"] == started * level["streams"]
        )
        assert level["direct"]["upstream_cpu_us_per_event"] > 0
        assert level["machine"]["same_cpu_round_trip_us"]["p50"] > 0
        for side in ("direct", "floor", "gateway"):
            assert level[side]["errors"] == 0
            assert level[side]["events"] == started * level["streams"] * 5
            assert level[side]["first_event_p99_ms"] >= level[side]["first_event_p50_ms"] > 0
            # 10 ms apart: no gap of 5 ms or more would mean events were not paced.
            assert level[side]["gap_max_ms"] >= 5
            opened = level[side]["connections_opened"]
            if connections == "fresh":
                assert opened == level[side]["streams"]
            elif level["streams"] == 8:  # 16 steady streams, about 8 open at once
                assert 1 <= opened < 16
        assert level["added_first_event_p50_ms"] == pytest.approx(
            level["gateway"]["first_event_p50_ms"] - level["direct"]["first_event_p50_ms"],
            abs=0.002,
        )
        assert level["gateway_cpu_s"] > 0
        # The floor: a bare forwarder in the gateway's place, measured against direct too.
        floor = level["floor"]
        assert floor["cpu_us_per_event"] > 0
        assert floor["added_gap_p99_ms"] == pytest.approx(
            floor["gap_p99_ms"] - level["direct"]["gap_p99_ms"], abs=0.002
        )
        assert level["gateway_run_queue_wait_s"] is None or level["gateway_run_queue_wait_s"] >= 0
        assert level["gateway_kib_per_open_stream"] >= 0
        # From the gateway's /metrics: its collections during the level.
        assert level["gateway_gc_pauses"] >= level["gateway_gc_pauses_over_1ms"] >= 0
        assert level["gateway_gc_pause_ms"] >= 0
