"""Apply an output contract around the proxy: guided decoding, verdicts, retries, refusals, flags.

Non-streamed answers are judged whole; `retry` re-asks with a fresh seed, `error` answers 502
`schema_violation`, `flag` passes the answer on marked invalid. Streams pass through as they
come and end with a verdict event before `[DONE]`; with `stream_validation: buffer` the answer
is fetched whole, judged (and retried) and only then sent as a stream. A contract that also
holds answers to the request's own schema (`request_schema: enforce_both`) applies the same
policy to a failure of either; the verdict's `source` says whose schema failed.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.contracts.contract import Contract, ContractVerdict, SchemaIssue
from gateway.errors import SchemaViolation
from gateway.routing.table import Target
from gateway.upstream.backends import UpstreamReply
from gateway.upstream.proxy import InferenceProxy, OpenStream
from monitoring import metrics

# Verdicts are reported to whoever records outcomes (metrics, capture, rollout analysis).
OnVerdict = Callable[[ContractVerdict], None]

_DONE = b"data: [DONE]"


@dataclass(frozen=True, slots=True)
class Judged:
    """An upstream answer with the contract's verdict on it (None: not judged, e.g. an error)."""

    reply: UpstreamReply
    verdict: ContractVerdict | None
    retries: int


def _answers(document: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(text, finish_reason) of every choice of a chat or text completion."""
    answers = []
    for choice in document.get("choices") or []:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        answers.append((text or "", choice.get("finish_reason")))
    return answers


def judge_document(contract: Contract, document: dict[str, Any]) -> ContractVerdict:
    """The verdict on an answer: the first choice that breaks the contract, else valid."""
    verdicts = [contract.judge(text, reason) for text, reason in _answers(document)]
    if not verdicts:
        return ContractVerdict("invalid", (SchemaIssue("$", "the answer has no choices"),), "")
    return next((v for v in verdicts if not v.ok), verdicts[0])


def _labels(target: Target) -> tuple[str, str, str]:
    return target.route, target.version_label, target.arm


def _violation(verdict: ContractVerdict, retries: int) -> SchemaViolation:
    whose = "the request's own" if verdict.source == "request" else "the route's"
    return SchemaViolation(
        f"The answer does not match {whose} JSON Schema ({verdict.result}"
        f"{f', after {retries} retries' if retries else ''}).",
        details={
            "validation_errors": [issue.as_dict() for issue in verdict.issues],
            "raw_output": verdict.text,
        },
    )


class ContractEnforcer:
    """Sends contract-bound requests through the proxy and judges what comes back."""

    def __init__(self, proxy: InferenceProxy) -> None:
        self._proxy = proxy

    async def complete(
        self,
        target: Target,
        contract: Contract,
        path: str,
        fields: dict[str, Any],
        request_id: str,
        on_verdict: OnVerdict,
    ) -> Judged:
        fields["response_format"] = contract.response_format()
        attempts = 1 + (contract.max_retries if contract.on_invalid == "retry" else 0)
        started = time.perf_counter()
        for attempt in range(attempts):
            reply = await self._proxy.complete(target, path, fields, request_id)
            if reply.status != 200:
                return Judged(reply, None, attempt)
            document = orjson.loads(reply.body)
            verdict = judge_document(contract, document)
            metrics.SCHEMA_VALIDATIONS.labels(*_labels(target), verdict.result).inc()
            on_verdict(verdict)
            if verdict.ok:
                break
            if attempt + 1 < attempts:
                metrics.SCHEMA_RETRIES.labels(*_labels(target)).inc()
                fields["seed"] = random.getrandbits(31)  # a fresh sample, not the same answer
        if attempt:
            metrics.SCHEMA_RETRY_DURATION.labels(*_labels(target)).observe(
                time.perf_counter() - started
            )
        if verdict.ok:
            return Judged(reply, verdict, attempt)
        if contract.on_invalid != "flag":
            raise _violation(verdict, attempt)
        document["turnout"] = {"schema": verdict.as_dict()}
        flagged = UpstreamReply(reply.status, reply.content_type, orjson.dumps(document))
        return Judged(flagged, verdict, attempt)

    def judge_stream(
        self,
        target: Target,
        contract: Contract,
        stream: OpenStream,
        on_verdict: OnVerdict,
    ) -> OpenStream:
        """The stream as it comes, plus a verdict event just before `[DONE]`."""
        events = _with_verdict(stream.events, target, contract, on_verdict)
        return OpenStream(stream.content_type, events, stream.resources)


async def _with_verdict(
    events: AsyncIterator[bytes],
    target: Target,
    contract: Contract,
    on_verdict: OnVerdict,
) -> AsyncIterator[bytes]:
    texts: dict[int, list[str]] = {}
    reasons: dict[int, str | None] = {}
    last: dict[str, Any] = {}
    async for chunk in events:
        for event in chunk.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue
            data = orjson.loads(event[6:])
            if "error" in data:
                continue
            last = data
            for choice in data.get("choices") or []:
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                texts.setdefault(choice.get("index", 0), []).append(text or "")
                if choice.get("finish_reason") is not None:
                    reasons[choice.get("index", 0)] = choice["finish_reason"]
        if _DONE not in chunk or not last:
            yield chunk
            continue
        verdicts = [contract.judge("".join(parts), reasons.get(i)) for i, parts in texts.items()]
        verdict = next((v for v in verdicts if not v.ok), verdicts[0] if verdicts else None)
        if verdict is None:
            yield chunk
            continue
        metrics.SCHEMA_VALIDATIONS.labels(*_labels(target), verdict.result).inc()
        on_verdict(verdict)
        before, _, after = chunk.partition(_DONE)
        verdict_event: dict[str, Any] = {
            "id": last.get("id"),
            "object": last.get("object"),
            "created": last.get("created"),
            "model": last.get("model"),
            "choices": [],
            "turnout": {"schema": verdict.as_dict()},
        }
        yield before + b"data: " + orjson.dumps(verdict_event) + b"\n\n" + _DONE + after


def buffered_stream(document: dict[str, Any], chat: bool, include_usage: bool) -> bytes:
    """A whole (judged) answer as the SSE events a streamed answer would have been."""
    base = {k: document.get(k) for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for index, choice in enumerate(document.get("choices") or []):
        if chat:
            message = choice.get("message") or {}
            delta = {"role": "assistant", "content": message.get("content") or ""}
            body = {"index": index, "delta": delta, "finish_reason": choice.get("finish_reason")}
        else:
            body = {"index": index, "text": choice.get("text") or "",
                    "finish_reason": choice.get("finish_reason")}  # fmt: skip
        events.append({**base, "choices": [body]})
    if include_usage and "usage" in document:
        events.append({**base, "choices": [], "usage": document["usage"]})
    if "turnout" in document:
        events.append({**base, "choices": [], "turnout": document["turnout"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + _DONE + b"\n\n"
