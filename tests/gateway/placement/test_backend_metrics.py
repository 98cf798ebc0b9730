"""Reading vLLM's own /metrics (queue depth, running requests, LoRA slots) and placement's use
of it: the parser on captured vLLM text, the scraper against a simulated backend over
loopback (failures keep the last reading until it is stale), and the choice among backends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.bench.fleet_sim import SimBackend, SimSpec, start_sim
from gateway.config import AdaptersConfig, TimeoutsConfig
from gateway.placement.fleet import BackendCapacity, FleetPlacement, Load, LoadReason, Serve
from gateway.serving.embedded_vllm import free_port
from gateway.upstream.backend_metrics import BackendMetrics, parse_samples, read_backend
from gateway.upstream.backends import Http1Upstream
from gateway.upstream.demand_placement import PlacementFeed, capacity_configured

# The whole /metrics page of the vLLM CPU build (0.32) the tests run (the `vllm_url` fixture:
# the demo model, --max-loras 4), right after a request for the adapter `summarize@v1`;
# `test_backend_metrics_vllm.py` checks the live page the same way.
CAPTURED = (Path(__file__).parent / "vllm_metrics.txt").read_text()


def test_parser_reads_queue_depth_and_lora_state_from_captured_vllm_text() -> None:
    reading = read_backend(CAPTURED)
    assert reading.waiting == 0
    assert reading.running == 0
    assert reading.max_lora == 4
    # The newest lora_requests_info series (its value is when it was set) is the state now:
    # idle; an older one still names the adapter that ran.
    assert reading.running_adapters == frozenset()
    assert reading.waiting_adapters == frozenset()
    older = [s.labels for s in parse_samples(CAPTURED, ["vllm:lora_requests_info"])]
    assert {"running_lora_adapters": "summarize@v1"}.items() <= older[0].items()
    names = {sample.name for sample in parse_samples(CAPTURED)}
    assert names == {
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:lora_requests_info",
    }


def test_parser_sums_engines_takes_the_newest_lora_series_and_skips_what_it_cannot_read() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_waiting{engine="1",model_name="m"} 4.0 1700000000000',
            'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0',
            'vllm:num_requests_running{engine="0",model_name="m"} NaN',
            'vllm:lora_requests_info{max_lora="8",running_lora_adapters="a,b",'
            'waiting_lora_adapters=""} 1.7e9',
            'vllm:lora_requests_info{max_lora="8",running_lora_adapters="c",'
            'waiting_lora_adapters="d\\"x"} 1.8e9',
            'vllm:lora_requests_info{max_lora="8",running_lora_adapters="old" 1.9e9',
            "vllm:num_requests_running",
        ]
    )
    reading = read_backend(text)
    assert reading.waiting == 7
    assert reading.running is None  # NaN and a line without a value are not readings
    assert reading.max_lora == 8
    assert reading.running_adapters == {"c"}
    assert reading.waiting_adapters == {'d"x'}


def test_a_page_without_vllm_series_reads_as_unknown() -> None:
    reading = read_backend("# an older vLLM\nprocess_cpu_seconds_total 12.5\n")
    assert (reading.waiting, reading.running, reading.max_lora) == (None, None, None)
    assert reading.running_adapters is None


def test_a_holder_with_a_queue_of_other_clients_requests_is_avoided() -> None:
    fleet = FleetPlacement({b: BackendCapacity(4, 2) for b in ("a", "b")})
    for backend in ("a", "b"):
        fleet.start_load(Load(backend, "v@1", reason=LoadReason.FIRST_USE))
    fleet.finish_load("a", "v@1", ok=True)
    fleet.finish_load("b", "v@1", ok=True)
    fleet.begin("b", "v@1")  # b has one of ours in flight, a none: a is chosen
    assert fleet.route("v@1") == Serve("a")
    fleet.set_queue("a", waiting=6, running=2)  # other clients: 8 requests, 6 of them waiting
    assert fleet.queued("a") == 6
    assert fleet.route("v@1") == Serve("b")
    fleet.set_queue("a", None)  # stale: back to our own in-flight counts
    assert fleet.route("v@1") == Serve("a")


def test_our_own_requests_in_the_backend_queue_do_not_count_as_other_clients() -> None:
    fleet = FleetPlacement({b: BackendCapacity(4, 2) for b in ("a", "b")})
    for i in range(5):
        fleet.start_load(Load("a", f"v{i}", reason=LoadReason.FIRST_USE))
        fleet.finish_load("a", f"v{i}", ok=True)
        fleet.begin("a", f"v{i}")
    fleet.set_queue("a", waiting=3, running=2)  # exactly our five requests
    assert fleet.queued("a") == 0
    fleet.set_queue("a", waiting=5, running=2)  # two more than ours, both waiting
    assert fleet.queued("a") == 2


def test_a_first_load_goes_to_the_backend_without_a_queue() -> None:
    fleet = FleetPlacement({b: BackendCapacity(4, 2) for b in ("a", "b")})
    fleet.set_queue("a", waiting=4, running=2)
    choices = {fleet.route(f"v{i}") for i in range(20)}
    assert {getattr(decision, "backend", None) for decision in choices} == {"b"}


def test_capacity_is_discovered_only_when_the_operator_set_no_slot_count() -> None:
    assert not capacity_configured(AdaptersConfig())
    assert capacity_configured(AdaptersConfig(max_loras=2))
    assert capacity_configured(AdaptersConfig.model_validate({"max_cpu_loras": 8}))
    fleet = FleetPlacement({"a": BackendCapacity(4, 4)})
    reading = read_backend(CAPTURED.replace('max_lora="4"', 'max_lora="2"'))
    PlacementFeed(fleet, discover=False)("a", reading)
    assert fleet.capacity("a") == BackendCapacity(4, 4)
    PlacementFeed(fleet, discover=True)("a", reading)
    assert fleet.capacity("a") == BackendCapacity(2, 2)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_scraper_reads_a_backend_keeps_the_last_reading_and_drops_it_once_stale(
    anyio_backend: str,
) -> None:
    sim = SimBackend(SimSpec(resident=2, batch=3, max_seqs=1, load_s=0.0, decode_s=0.5, slowdown=0))
    port = free_port()
    server = await start_sim(sim, "127.0.0.1", port)
    origin = f"http://127.0.0.1:{port}"
    client = Http1Upstream(TimeoutsConfig())
    clock = Clock()
    seen: list[tuple[str, int | None]] = []
    scraper = BackendMetrics(
        [origin],
        interval_s=1.0,
        stale_after=3,
        clock=clock,
        on_reading=lambda b, r: seen.append((b, None if r is None else r.waiting)),
    )
    sim.preload(["x"])
    requests = [asyncio.ensure_future(sim.complete("x")) for _ in range(3)]
    try:
        await asyncio.sleep(0.05)  # one runs (max_seqs 1), two wait
        assert await scraper.scrape(client, origin)
        reading = scraper.latest(origin)
        assert reading is not None
        assert (reading.waiting, reading.running, reading.max_lora) == (2, 1, 3)
        assert reading.running_adapters == {"x"}
        server.close()
        await server.wait_closed()
        await client.close()  # the kept-alive connection goes too: the next scrape fails
        clock.now = 2.5
        assert not await scraper.scrape(client, origin)
        assert scraper.latest(origin) == reading  # kept, 2.5 s old
        assert scraper.age_s(origin) == 2.5
        scraper.expire()
        assert seen == [(origin, 2)]
        clock.now = 3.5  # past three intervals: stale
        assert scraper.latest(origin) is None
        scraper.expire()
        assert seen == [(origin, 2), (origin, None)]
    finally:
        for request in requests:
            request.cancel()
        sim.stop()
        server.close()
        await client.close()
