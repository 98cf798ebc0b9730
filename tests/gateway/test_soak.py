"""`turnout bench soak`: a short real run (stub upstream, gateway process) and its report."""

from __future__ import annotations

import argparse
import json

import pytest

from gateway.bench.soak import (
    MemorySample,
    Sample,
    add_commands,
    memory_report,
    percentile,
    soak_report,
)


def test_a_short_soak_at_a_fixed_rate_reports_no_errors_per_interval_and_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(
        ["soak", "--minutes", "0.1", "--rate", "20", "--interval", "2", "--json"]
    )
    code = args.run(args)
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["errors"] == 0, report["error_kinds"]
    assert report["requests"] == 120  # 20 a second for 6 s: the schedule, not the answers
    assert [i["start_s"] for i in report["intervals"]] == [0.0, 2.0, 4.0]
    assert [i["requests"] for i in report["intervals"]] == [40, 40, 40]
    for interval in report["intervals"]:
        assert 0 < interval["p50_ms"] <= interval["p99_ms"] <= interval["max_ms"]
        assert interval["max_send_lag_ms"] >= 0
    # Latency is timed finer than whole milliseconds (uvloop's own clock is not).
    assert any(i["p50_ms"] != round(i["p50_ms"]) for i in report["intervals"])
    memory = report["memory"]
    assert len(memory["samples"]) >= 5
    assert all(s["rss_bytes"] > 10 * 2**20 for s in memory["samples"])  # a Python process
    assert memory["warmup_s"] == pytest.approx(1.2)
    assert isinstance(memory["growth_percent"], float)
    assert memory["meets_target"] == (memory["growth_percent"] < 5.0)


def test_percentiles_use_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile([7.0], 50) == 7.0


def test_memory_growth_is_measured_from_the_end_of_the_warmup() -> None:
    memory = [MemorySample(0, 50), MemorySample(5, 100), MemorySample(10, 103)]
    report = memory_report(memory, warmup_s=5)
    assert report["rss_after_warmup_bytes"] == 100
    assert report["growth_percent"] == pytest.approx(3.0)
    assert report["meets_target"]
    assert not memory_report([*memory, MemorySample(15, 106)], warmup_s=5)["meets_target"]


def test_errors_are_counted_by_kind_and_left_out_of_latency() -> None:
    samples = [
        Sample(0.1, 0.010, None),
        Sample(0.2, 5.000, "status 503"),
        Sample(1.1, 0.020, None),
        Sample(1.2, 0.001, "ConnectError"),
    ]
    report = soak_report(samples, [MemorySample(0, 1), MemorySample(2, 1)], 2.0, 2.0, 1.0, 0.0)
    assert report["errors"] == 2
    assert report["error_kinds"] == {"status 503": 1, "ConnectError": 1}
    assert [i["errors"] for i in report["intervals"]] == [1, 1]
    assert report["intervals"][0]["max_ms"] == pytest.approx(10.0)
    assert report["latency_after_warmup"]["max_ms"] == pytest.approx(20.0)


def test_the_send_lag_is_reported_per_interval_and_for_the_whole_run() -> None:
    samples = [Sample(0.1, 0.010, None, 0.002), Sample(1.1, 0.010, None, 0.030)]
    report = soak_report(samples, [MemorySample(0, 1), MemorySample(2, 1)], 2.0, 2.0, 1.0, 0.0)
    assert [i["max_send_lag_ms"] for i in report["intervals"]] == [2.0, 30.0]
    assert report["max_send_lag_ms"] == 30.0
