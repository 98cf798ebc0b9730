"""A simulated vLLM backend for `turnout bench fleet`: LoRA slots, load times and batching.

It speaks the part of vLLM's HTTP API placement uses: `POST /v1/load_lora_adapter` and
`/v1/unload_lora_adapter` (`lora_name`), `POST /v1/completions`, `GET /v1/models` (as vLLM: the
base model, then every adapter loaded through the API and not unloaded, with `parent` = the
base, once its load completed, whatever the LRU keeps in memory), `GET /health`,
and `GET /metrics` with the series of vLLM's own that the gateway reads
(`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:lora_requests_info`,
`vllm:request_success_total`). `POST /sim/restart` (not vLLM's) makes it forget everything, as
a vLLM restart does: every adapter, every queued and running request (answered 404), and loads
under way (answered 503).
What it enforces, as vLLM does:
- at most `resident` adapters held (`--max-cpu-loras`); loading one more evicts the least
  recently used idle one; a load takes `load_s` of the engine's time (nothing decodes meanwhile);
- at most `batch` distinct adapters running at once (`--max-loras`) and `max_seqs` requests;
  others queue;
- a request for an adapter name it was never given (or was told to unload) gets vLLM's 404
  (after `not_found_s`, 0 by default: a 404 that reaches the gateway late), unless `on_demand`
  is set, in which case it loads it first (what a LoRA resolver does: the
  round-robin baseline); a known name its LRU dropped is loaded again, at the same cost;
  with `forget_loaded` (not vLLM's) every adapter request gets that 404, even for a name just
  loaded: a backend that loses whatever it loads, to test the gateway's bounded reload;
- decode steps slow down with the distinct adapters in the batch: `(1 + slowdown * (k-1))`.
The answer's text names the adapter that produced it, so a client can count wrong answers;
with `"stream": true` it comes as one SSE event and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_STREAM = re.compile(rb'"stream"\s*:\s*true')


@dataclass(frozen=True, slots=True)
class SimSpec:
    resident: int
    batch: int
    max_seqs: int
    load_s: float
    decode_s: float
    slowdown: float
    on_demand: bool = False
    steps: int = 10  # decode steps per request
    load_blocks: bool = True  # vLLM loads on the engine, between steps
    not_found_s: float = 0.0  # how late a 404 for an unknown name is answered
    forget_loaded: bool = False  # answer 404 for every adapter, loaded or not


@dataclass(slots=True)
class SimStats:
    loads: int = 0
    evictions: int = 0
    served: int = 0
    not_found: int = 0
    metrics_reads: int = 0


@dataclass(slots=True)
class _Sequence:
    name: str
    done: asyncio.Future[bool]
    cold: bool = False
    left: int = 0


class SimBackend:
    """One simulated vLLM engine: a loop of decode steps, with adapter loads in between.

    As in vLLM, loading an adapter runs on the engine between steps, so a load stalls every
    request running on that backend for `load_s`; loads are served one at a time.
    """

    def __init__(self, spec: SimSpec) -> None:
        self.spec = spec
        self.resident: OrderedDict[str, None] = OrderedDict()  # the LRU of loaded weights
        self.registered: set[str] = set()  # names the API serves (loaded, not unloaded)
        self.stats = SimStats()
        self._loads: OrderedDict[str, asyncio.Future[bool]] = OrderedDict()
        self._waiting: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._wake = asyncio.Event()
        self._engine: asyncio.Task[None] | None = None
        self._loader: asyncio.Task[None] | None = None
        self._load_wake = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._engine = loop.create_task(self._run())
        if not self.spec.load_blocks:
            self._loader = loop.create_task(self._load_beside())

    def stop(self) -> None:
        for task in (self._engine, self._loader):
            if task is not None:
                task.cancel()

    def preload(self, names: list[str]) -> None:
        for name in names:
            self.resident[name] = None
            self.registered.add(name)

    def load(self, name: str) -> asyncio.Future[bool]:
        """The pending load of `name` (one per name however many ask); done if resident. Its
        result: whether it loaded (False: a restart forgot it meanwhile). As in vLLM, the name
        is served (and listed) once its first load completes."""
        future = self._loads.get(name)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            if name in self.resident:
                self.registered.add(name)
                future.set_result(True)
                return future
            self._loads[name] = future
            self._wake.set()
            self._load_wake.set()
        return future

    def listed(self) -> list[str]:
        """The adapters `GET /v1/models` names, as vLLM: loaded through the API, not unloaded."""
        return sorted(self.registered)

    def restart(self) -> None:
        """Forget everything, as a restarted vLLM has: adapters, requests, loads under way."""
        self.registered.clear()
        self.resident.clear()
        for sequence in self._waiting + self._running:
            if not sequence.done.done():
                sequence.done.set_result(False)
        self._waiting, self._running = [], []
        for future in self._loads.values():
            if not future.done():
                future.set_result(False)
        self._loads.clear()

    def unload(self, name: str) -> bool:
        if name not in self.registered or any(seq.name == name for seq in self._running):
            return False
        self.registered.discard(name)
        self.resident.pop(name, None)
        return True

    async def complete(self, name: str) -> tuple[int, bytes]:
        if self.spec.forget_loaded or (name not in self.registered and not self.spec.on_demand):
            self.stats.not_found += 1  # counted as it arrives, answered `not_found_s` later
            if self.spec.not_found_s > 0:
                await asyncio.sleep(self.spec.not_found_s)
            return 404, _not_found(name)
        cold = name not in self.resident
        if cold:
            self.load(name)
        sequence = _Sequence(name, asyncio.get_running_loop().create_future(), cold)
        self._waiting.append(sequence)
        self._wake.set()
        if not await sequence.done:
            self.stats.not_found += 1
            return 404, _not_found(name)
        self.stats.served += 1
        answer = {
            "object": "text_completion",
            "model": name,
            "choices": [{"index": 0, "text": f"adapter:{name}", "finish_reason": "length"}],
            "sim": {"cold": cold},
        }
        return 200, json.dumps(answer).encode()

    async def _load_next(self) -> None:
        name, future = next(iter(self._loads.items()))
        await asyncio.sleep(self.spec.load_s)
        if self._loads.get(name) is not future:
            return  # a restart forgot it meanwhile
        self._make_room()
        self.resident[name] = None
        self.registered.add(name)
        self.stats.loads += 1
        del self._loads[name]
        future.set_result(True)
        self._wake.set()

    async def _load_beside(self) -> None:
        """Loads one at a time beside the engine (`load_blocks` off): decoding goes on."""
        while True:
            if not self._loads:
                self._load_wake.clear()
                await self._load_wake.wait()
                continue
            await self._load_next()

    async def _run(self) -> None:
        while True:
            if self._loads and self.spec.load_blocks:
                await self._load_next()  # the engine does nothing else meanwhile
                continue
            self._admit()
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            distinct = len({seq.name for seq in self._running})
            step_s = self.spec.decode_s / self.spec.steps
            await asyncio.sleep(step_s * (1 + self.spec.slowdown * (distinct - 1)))
            still = []
            for seq in self._running:
                seq.left -= 1
                if seq.left <= 0:
                    seq.done.set_result(True)
                else:
                    still.append(seq)
            self._running = still

    def _make_room(self) -> None:
        """vLLM's LRU: past capacity, the least recently used adapter not running goes."""
        busy = {seq.name for seq in self._running}
        while len(self.resident) >= self.spec.resident:
            victim = next((name for name in self.resident if name not in busy), None)
            if victim is None:
                return
            del self.resident[victim]
            self.stats.evictions += 1

    def _admit(self) -> None:
        active = {seq.name for seq in self._running}
        waiting = []
        for seq in self._waiting:
            if seq.name not in self.registered and not self.spec.on_demand:
                seq.done.set_result(False)  # unloaded through the API while it waited
                continue
            if seq.name not in self.resident:
                self.load(seq.name)  # the LRU dropped it while it waited: load it again
                waiting.append(seq)
                continue
            fits = seq.name in active or len(active) < self.spec.batch
            if fits and len(self._running) < self.spec.max_seqs:
                seq.left = self.spec.steps
                self._running.append(seq)
                active.add(seq.name)
                self.resident.move_to_end(seq.name)
            else:
                waiting.append(seq)
        self._waiting = waiting

    def metrics_text(self) -> bytes:
        """vLLM's own series (the names and labels of vLLM 0.32) for this engine's state now,
        and the simulator's own counters (`sim_`), this read counted."""
        self.stats.metrics_reads += 1
        running = sorted({seq.name for seq in self._running})
        waiting = sorted({seq.name for seq in self._waiting})
        engine = 'engine="0",model_name="sim"'
        lora = (
            f'max_lora="{self.spec.batch}",running_lora_adapters="{",".join(running)}",'
            f'waiting_lora_adapters="{",".join(waiting)}"'
        )
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{engine}}} {float(len(self._running))}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{engine}}} {float(len(self._waiting))}",
            "# TYPE vllm:lora_requests_info gauge",
            f"vllm:lora_requests_info{{{lora}}} {time.time()}",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{engine},finished_reason="length"}} '
            f"{float(self.stats.served)}",
            "# TYPE sim_not_found_total counter",  # the simulator's own: its 404s for adapters
            f"sim_not_found_total {float(self.stats.not_found)}",
            "# TYPE sim_metrics_reads_total counter",  # reads of this page, this one included
            f"sim_metrics_reads_total {float(self.stats.metrics_reads)}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _not_found(name: str) -> bytes:
    error = {"message": f"The model `{name}` does not exist.", "type": "NotFoundError", "code": 404}
    return json.dumps({"error": error}).encode()


class _SimProtocol(asyncio.Protocol):
    def __init__(self, backend: SimBackend) -> None:
        self._backend = backend
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._tail: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buffer[:head_end]
            match = _CONTENT_LENGTH.search(head)
            total = head_end + 4 + (int(match.group(1)) if match else 0)
            if len(self._buffer) < total:
                return
            body = self._buffer[head_end + 4 : total]
            self._buffer = self._buffer[total:]
            self._tail = asyncio.ensure_future(self._answer(head, body, self._tail))

    async def _answer(
        self, head: bytes, body: bytes, previous: asyncio.Future[None] | None
    ) -> None:
        status, payload = await self._handle(head.split(b"\r\n", 1)[0], body)
        if previous is not None:
            await previous  # answers go back in request order (pipelining)
        if self._transport is None or self._transport.is_closing():
            return
        reason = b"OK" if status == 200 else b"Not Found" if status == 404 else b"Error"
        content_type = b"application/json"
        if status == 200 and _STREAM.search(body):  # the answer as SSE events, then [DONE]
            content_type = b"text/event-stream"
            payload = b"data: " + payload + b"\n\ndata: [DONE]\n\n"
        self._transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status, reason, content_type, len(payload), payload)
        )

    async def _handle(self, request_line: bytes, body: bytes) -> tuple[int, bytes]:
        backend = self._backend
        if request_line.startswith(b"GET /health"):
            return 200, b"{}"
        if request_line.startswith(b"GET /metrics"):
            return 200, backend.metrics_text()
        if request_line.startswith(b"GET /v1/models"):
            cards = [{"id": "base", "object": "model", "parent": None}] + [
                {"id": name, "object": "model", "parent": "base"} for name in backend.listed()
            ]
            return 200, json.dumps({"object": "list", "data": cards}).encode()
        if request_line.startswith(b"POST /sim/restart"):
            backend.restart()
            return 200, b'"restarted"'

        fields = json.loads(body or b"{}")
        if request_line.startswith(b"POST /v1/load_lora_adapter"):
            if await backend.load(fields["lora_name"]):
                return 200, b'"ok"'
            return 503, b'{"error": {"message": "restarted during the load", "code": 503}}'
        if request_line.startswith(b"POST /v1/unload_lora_adapter"):
            if backend.unload(fields["lora_name"]):
                return 200, b'"ok"'
            return 404, _not_found(fields["lora_name"])
        return await backend.complete(str(fields.get("model")))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def start_sim(backend: SimBackend, host: str, port: int) -> asyncio.Server:
    """Serve `backend` on `host:port` until the returned server is closed."""
    loop = asyncio.get_running_loop()
    backend.start()
    return await loop.create_server(lambda: _SimProtocol(backend), host, port, backlog=1024)


async def _serve(spec: SimSpec, host: str, port: int) -> None:
    server = await start_sim(SimBackend(spec), host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    """One simulated backend as a process (tests run the gateway in front of two)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--resident", type=int, default=2, help="vLLM --max-cpu-loras")
    parser.add_argument("--batch", type=int, default=2, help="vLLM --max-loras")
    parser.add_argument("--max-seqs", type=int, default=16)
    parser.add_argument("--load-ms", type=float, default=50.0)
    parser.add_argument("--decode-ms", type=float, default=20.0)
    parser.add_argument(
        "--not-found-ms", type=float, default=0.0, help="delay of a 404 for an unknown adapter"
    )
    parser.add_argument(
        "--forget-loaded",
        action="store_true",
        help="answer 404 for every adapter, even one just loaded (not vLLM's behaviour)",
    )
    args = parser.parse_args()
    spec = SimSpec(
        resident=args.resident,
        batch=args.batch,
        max_seqs=args.max_seqs,
        load_s=args.load_ms / 1000,
        decode_s=args.decode_ms / 1000,
        slowdown=0.1,
        not_found_s=args.not_found_ms / 1000,
        forget_loaded=args.forget_loaded,
    )
    asyncio.run(_serve(spec, args.host, args.port))


if __name__ == "__main__":
    main()
