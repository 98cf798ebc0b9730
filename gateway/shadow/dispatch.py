"""Send a share of a route's requests to its shadowed candidate too, and pair the answers.

The caller only ever gets the stable answer. `begin` is called as the stable request is sent:
it draws whether this request is copied, checks the shadows' own budget, and schedules the
copy as a task, which first runs when the request handler waits for the stable answer, and
never delays it. The copy borrows a free backend slot or is dropped (it never queues), and a
real request that needs its slot cancels it. A streamed request is copied as a whole request.
When both sides have finished, the pair is compared off the request path
(`gateway.shadow.recorder`). Every copy that is not compared is counted with its reason.
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
from gateway.shadow.settings import ShadowSettings
from gateway.upstream.proxy import InferenceProxy
from monitoring.metrics import SHADOW_REQUESTS

_NOT_COPIED = ("stream", "stream_options")


class PairSink(Protocol):
    """Where a finished pair goes (`gateway.shadow.recorder.PairRecorder`)."""

    def record(self, pair: ShadowPair) -> None: ...


class ShadowPair:
    """One copied request: the stable outcome arrives from the endpoint, the candidate's side
    from the copy's task; whichever comes second hands the pair on."""

    __slots__ = ("candidate", "category", "contract", "sink", "stable", "target")

    def __init__(
        self,
        target: Target,
        contract: Contract | None,
        sink: PairSink,
        category: str | None = None,
    ) -> None:
        self.target = target
        self.contract = contract
        self.sink = sink
        self.category = category  # the request's input category, where the route has them
        self.stable: FinishedRequest | None = None
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
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def begin(
        self,
        entry: RouteEntry,
        path: str,
        fields: dict[str, Any],
        request_id: str,
        contract: Contract | None,
    ) -> ShadowPair | None:
        """Copy this request to the route's shadowed candidate, if it is drawn and budgeted."""
        target = entry.shadow
        if target is None or target.rollout is None or target.rollout.paused:
            return None
        if self._draw() * 100.0 >= target.rollout.shadow_percent:
            return None
        if len(self._tasks) >= self._settings.max_in_flight:
            SHADOW_REQUESTS.labels(target.route, "dropped_budget").inc()
            return None
        copy = {name: value for name, value in fields.items() if name not in _NOT_COPIED}
        if contract is not None:
            copy["response_format"] = contract.response_format()
        rule = entry.shadow_category
        category = None if rule is None else rule.category_of(fields)
        pair = ShadowPair(target, contract, self._sink, category)
        # Timed from here, as the stable request is about to be sent, as stable's is timed.
        started = time.perf_counter()
        task = asyncio.create_task(self._run(pair, path, copy, request_id + "-shadow", started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pair

    async def _run(
        self,
        pair: ShadowPair,
        path: str,
        fields: dict[str, Any],
        request_id: str,
        started: float,
    ) -> None:
        target = pair.target
        try:
            reply = await self._proxy.shadow(target, path, fields, request_id)
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
