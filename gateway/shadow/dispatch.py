"""Send a share of a route's requests to its shadowed candidate too, and pair the answers.

The caller only ever gets the stable answer, and pays for the copy only what `begin` costs:
`begin` is called as the stable request is sent; it draws whether this request is copied,
checks the shadows' own budget and keeps a copy of the request's fields. The copy is sent by
`send`, which the endpoint calls once the stable answer's last byte has been handed to the
client, so none of the copy's work (serialising, the upstream call, parsing, judging,
comparing) runs while the stable answer is being made or relayed. The copy borrows a free
backend slot or is dropped (it never queues), and a real request that needs its slot cancels
it. A streamed request is copied as a whole request. When both sides have finished, the pair
is compared off the request path (`gateway.shadow.recorder`). Every copy that is not compared
is counted with its reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.contracts.contract import Contract
from gateway.errors import AdapterNotReady, TurnoutError
from gateway.outcomes.recorder import FinishedRequest, answer_of
from gateway.routing.table import RouteEntry, Target
from gateway.shadow.compare import UPSTREAM_FAILED_STATUS, Side
from gateway.shadow.settings import ShadowCategory, ShadowSettings
from gateway.upstream.proxy import InferenceProxy
from monitoring.metrics import SHADOW_REQUESTS

_NOT_COPIED = ("stream", "stream_options")


class PairSink(Protocol):
    """Where a finished pair goes (`gateway.shadow.recorder.PairRecorder`)."""

    def record(self, pair: ShadowPair) -> None: ...


class StableVerdict:
    """The served path's refusal verdict on a pair's stable answer (`detector` None: none yet),
    for the pair to reuse instead of scoring the same text again. The stable outcome points
    here rather than at the pair, so pair and outcome hold no reference cycle."""

    __slots__ = ("detector", "refusal")

    def __init__(self) -> None:
        self.detector: str | None = None
        self.refusal = False

    def judged(self, detector: str, refusal: bool) -> None:
        self.detector, self.refusal = detector, refusal


class ShadowPair:
    """One copied request: the stable outcome arrives from the endpoint, the candidate's side
    from the copy's task; whichever comes second hands the pair on."""

    __slots__ = (
        "candidate",
        "category",
        "contract",
        "copy",
        "path",
        "request_id",
        "rule",
        "sink",
        "stable",
        "stable_judged",
        "target",
    )

    def __init__(
        self,
        target: Target,
        contract: Contract | None,
        sink: PairSink,
        path: str,
        copy: dict[str, Any],
        request_id: str,
        rule: ShadowCategory | None = None,
    ) -> None:
        self.target = target
        self.contract = contract
        self.sink = sink
        # The request as copied, kept until it is sent (`ShadowDispatcher.send`).
        self.path = path
        self.copy = copy
        self.request_id = request_id
        self.rule = rule  # how the route finds a request's input category, if it has them
        self.category: str | None = None  # set as the copy is sent
        self.stable: FinishedRequest | None = None
        # The served path's refusal verdict on the stable answer, if it scored it.
        self.stable_judged = StableVerdict()
        self.candidate: Side | None = None

    def stable_finished(self, outcome: FinishedRequest) -> None:
        self.stable = outcome
        if self.candidate is not None:
            self._complete()

    def candidate_finished(self, side: Side) -> None:
        self.candidate = side
        if self.stable is not None:
            self._complete()

    def _complete(self) -> None:
        # Off the request path: the comparison runs once the loop has sent what it had to send.
        asyncio.get_running_loop().call_soon(self.sink.record, self)


class ShadowDispatcher:
    """Samples, budgets and runs the shadow copies of one gateway process."""

    def __init__(
        self,
        proxy: InferenceProxy,
        sink: PairSink,
        settings: ShadowSettings,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._proxy = proxy
        self._sink = sink
        self._settings = settings
        self._draw = draw
        self._waiting = 0  # copies taken whose stable answer is not out yet
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Copies taken and not finished: waiting for their stable answer, or sent."""
        return self._waiting + len(self._tasks)

    def begin(
        self,
        entry: RouteEntry,
        path: str,
        fields: dict[str, Any],
        request_id: str,
        contract: Contract | None,
    ) -> ShadowPair | None:
        """Copy this request to the route's shadowed candidate, if it is drawn and budgeted;
        the copy goes out at `send`, which must follow (once) for every pair returned."""
        target = entry.shadow
        if target is None or target.rollout is None or target.rollout.paused:
            return None
        if self._draw() * 100.0 >= target.rollout.shadow_percent:
            return None
        if self.in_flight >= self._settings.max_in_flight:
            SHADOW_REQUESTS.labels(target.route, "dropped_budget").inc()
            return None
        # A shallow copy now, before the stable request's own fields are changed on its way.
        copy = {name: value for name, value in fields.items() if name not in _NOT_COPIED}
        self._waiting += 1
        return ShadowPair(
            target, contract, self._sink, path, copy, request_id, entry.shadow_category
        )

    def send(self, pair: ShadowPair) -> None:
        """The stable answer is out (its last byte handed to the client, or it failed): send
        the copy. A pair whose stable side never finished cannot be compared: not sent."""
        self._waiting -= 1
        if pair.stable is None:
            SHADOW_REQUESTS.labels(pair.target.route, "failed").inc()
            return
        task = asyncio.create_task(self._run(pair))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, pair: ShadowPair) -> None:
        target = pair.target
        fields = pair.copy
        if pair.contract is not None:
            fields["response_format"] = pair.contract.response_format()
        if pair.rule is not None:
            pair.category = pair.rule.category_of(fields)
        # Timed from just before the copy is sent (stable's answer: from its arrival).
        started = time.perf_counter()
        try:
            reply = await self._proxy.shadow(target, pair.path, fields, pair.request_id + "-shadow")
        except asyncio.CancelledError:
            SHADOW_REQUESTS.labels(target.route, "preempted").inc()
            return
        except AdapterNotReady:
            SHADOW_REQUESTS.labels(target.route, "failed").inc()
            return
        except TurnoutError:  # the candidate's backend failed it: an error, compared
            elapsed = time.perf_counter() - started
            pair.candidate_finished(Side(UPSTREAM_FAILED_STATUS, elapsed, None))
            return
        if reply is None:
            SHADOW_REQUESTS.labels(target.route, "dropped_load").inc()
            return
        latency_s = time.perf_counter() - started
        if len(reply.body) > self._settings.max_body_bytes:
            SHADOW_REQUESTS.labels(target.route, "too_large").inc()
            return
        if reply.status != 200:
            pair.candidate_finished(Side(reply.status, latency_s, None))
            return
        answer = answer_of(reply.body)
        schema_valid = None
        if pair.contract is not None:
            verdict = pair.contract.judge(answer.text or "", answer.finish_reason)
            schema_valid = verdict.ok
        pair.candidate_finished(
            Side(
                reply.status,
                latency_s,
                answer.text,
                answer.finish_reason,
                answer.completion_tokens,
                schema_valid,
            )
        )
