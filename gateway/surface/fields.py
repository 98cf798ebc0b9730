"""The request fields the gateway forwards to vLLM: one table of name, endpoints, bound and why.

The gateway forwards a top-level field only if this table allows it on the endpoint (or the
route's `requests.extra_fields` names it); anything else is refused with a 400 naming it. vLLM
adds request fields in most releases, and some of them reach server-side Jinja, the scheduler,
remote hosts or media fetching: a denylist would always be a release behind.

`default` says what a route gets without configuration:
- `allowed`: forwarded, typed by the protocol models, bounded where `bound` says;
- `opt-in`: refused unless the route lists it in `extra_fields` (the risk is in `why`);
- `never`: decided by the gateway alone; no configuration can let a client set it.
A field the table does not name may still be listed in `extra_fields`; the gateway then forwards
it unchecked, and the operator owns that choice (docs/security.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Endpoint = Literal["chat", "completions"]
Default = Literal["allowed", "opt-in", "never"]

CHAT: frozenset[Endpoint] = frozenset({"chat"})
COMPLETIONS: frozenset[Endpoint] = frozenset({"completions"})
BOTH: frozenset[Endpoint] = CHAT | COMPLETIONS

ENDPOINT_PATHS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
}


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One top-level request field: where it is accepted, what bounds it, and why."""

    name: str
    endpoints: frozenset[Endpoint]
    default: Default
    bound: str
    why: str


FIELDS: tuple[FieldRule, ...] = (
    # --- OpenAI's chat and completions fields ---------------------------------------------------
    FieldRule(
        "model", BOTH, "allowed", "a route name", "rewritten to the adapter version vLLM serves"
    ),
    FieldRule(
        "messages",
        CHAT,
        "allowed",
        "limits.max_messages, max_content_chars; keys and content parts checked",
        "the conversation",
    ),
    FieldRule("prompt", COMPLETIONS, "allowed", "max_content_chars (text prompts)", "the prompt"),
    FieldRule("stream", BOTH, "allowed", "-", "server-sent events"),
    FieldRule("stream_options", BOTH, "allowed", "-", "include_usage"),
    FieldRule(
        "max_tokens",
        BOTH,
        "allowed",
        "route max_tokens, else limits.max_tokens (4096)",
        "generation length: the main cost of a request",
    ),
    FieldRule("max_completion_tokens", CHAT, "allowed", "as max_tokens", "OpenAI's newer name"),
    FieldRule("temperature", BOTH, "allowed", ">= 0", "sampling"),
    FieldRule("top_p", BOTH, "allowed", "-", "sampling"),
    FieldRule("n", BOTH, "allowed", "max_n (4)", "choices per request: multiplies generation"),
    FieldRule(
        "stop",
        BOTH,
        "allowed",
        "max_stop (4) strings of max_stop_chars (256)",
        "every stop string is checked against the text after every token",
    ),
    FieldRule("seed", BOTH, "allowed", "seed_min..seed_max (0..2^63-1)", "reproducible sampling"),
    FieldRule("presence_penalty", BOTH, "allowed", "-", "sampling"),
    FieldRule("frequency_penalty", BOTH, "allowed", "-", "sampling"),
    FieldRule(
        "logit_bias",
        BOTH,
        "allowed",
        "max_logit_bias (300) entries",
        "applied to the logits at every step",
    ),
    FieldRule(
        "logprobs",
        BOTH,
        "allowed",
        "completions: max_logprobs (20)",
        "chat: a flag; completions: how many alternatives per token",
    ),
    FieldRule(
        "top_logprobs",
        CHAT,
        "allowed",
        "max_logprobs (20)",
        "alternatives per token; vLLM reads -1 as the whole vocabulary",
    ),
    FieldRule("user", BOTH, "allowed", "-", "sticky rollout assignment"),
    FieldRule(
        "metadata",
        BOTH,
        "allowed",
        "16 string pairs, keys up to 64 and values up to 512 characters (OpenAI's)",
        "the application's labels; a shadow may read a request's input category from it "
        "(docs/rollouts.md)",
    ),
    FieldRule(
        "response_format",
        BOTH,
        "allowed",
        "contracts: schema size, depth, $ref",
        "becomes the guided-decoding contract (docs/contracts.md)",
    ),
    FieldRule(
        "tools",
        CHAT,
        "allowed",
        "max_tools (32), max_tools_bytes (64 KiB); schemas checked",
        "rendered into the prompt by the chat template",
    ),
    FieldRule(
        "tool_choice",
        CHAT,
        "allowed",
        "-",
        "which tool; `required` and named tools are "
        "guided decoding the gateway does not check, see docs/contracts.md",
    ),
    FieldRule("parallel_tool_calls", CHAT, "allowed", "-", "a flag"),
    FieldRule("echo", COMPLETIONS, "allowed", "-", "the prompt repeated in the answer"),
    FieldRule("suffix", COMPLETIONS, "allowed", "max_content_chars", "text after the completion"),
    # --- vLLM sampling extensions that are safe for tenants --------------------------------------
    FieldRule("top_k", BOTH, "allowed", "-", "sampling: keep the k most likely tokens"),
    FieldRule("min_p", BOTH, "allowed", "-", "sampling: drop tokens below p x the top one"),
    FieldRule("repetition_penalty", BOTH, "allowed", "-", "sampling"),
    FieldRule(
        "min_tokens",
        BOTH,
        "allowed",
        "the max_tokens ceiling",
        "no stop before this many tokens; bounded like max_tokens",
    ),
    FieldRule(
        "ignore_eos",
        BOTH,
        "allowed",
        "the max_tokens ceiling",
        "generate to max_tokens (or the context length when no max_tokens is set), as a "
        "model that never stops would",
    ),
    FieldRule("skip_special_tokens", BOTH, "allowed", "-", "detokenization"),
    FieldRule("spaces_between_special_tokens", BOTH, "allowed", "-", "detokenization"),
    FieldRule("include_stop_str_in_output", BOTH, "allowed", "-", "detokenization"),
    # --- vLLM fields a route may opt in to (`extra_fields`), at the operator's risk -------------
    FieldRule(
        "priority",
        BOTH,
        "opt-in",
        "-",
        "jumps vLLM's queue when it schedules by priority: one tenant ahead of all others",
    ),
    FieldRule(
        "chat_template",
        CHAT,
        "opt-in",
        "-",
        "a Jinja template vLLM renders server-side (GHSA-4hhp-h66f-j5j7, GHSA-jmjw-q4x3-hmc2: "
        "resource-exhaustion DoS)",
    ),
    FieldRule(
        "chat_template_kwargs",
        CHAT,
        "opt-in",
        "-",
        "arguments to the server-side template, same advisories as chat_template",
    ),
    FieldRule("vllm_xargs", BOTH, "opt-in", "-", "arbitrary arguments for vLLM plugins"),
    FieldRule("logits_processors", BOTH, "opt-in", "-", "names code that runs on every step"),
    FieldRule(
        "kv_transfer_params",
        BOTH,
        "opt-in",
        "-",
        "disaggregated prefill: names remote hosts to pull KV cache from",
    ),
    FieldRule(
        "ec_transfer_params", BOTH, "opt-in", "-", "as kv_transfer_params, for encoder caches"
    ),
    FieldRule("mm_processor_kwargs", CHAT, "opt-in", "-", "arguments to the multimodal processor"),
    FieldRule("media_io_kwargs", CHAT, "opt-in", "-", "arguments to media decoding"),
    FieldRule(
        "prompt_logprobs",
        BOTH,
        "opt-in",
        "max_logprobs (20)",
        "logprobs for every prompt token; -1 is the whole vocabulary",
    ),
    FieldRule("use_beam_search", BOTH, "opt-in", "-", "beam search: n beams held to the end"),
    FieldRule("stop_token_ids", BOTH, "opt-in", "-", "an unbounded list checked at every token"),
    FieldRule("bad_words", BOTH, "opt-in", "-", "an unbounded list checked at every token"),
    FieldRule("allowed_token_ids", BOTH, "opt-in", "-", "an unbounded list applied at every token"),
    FieldRule("truncate_prompt_tokens", BOTH, "opt-in", "-", "silently drops part of the prompt"),
    FieldRule("cache_salt", BOTH, "opt-in", "-", "prefix-cache isolation"),
    FieldRule(
        "request_id", BOTH, "opt-in", "-", "vLLM's own request id (the gateway sets x-request-id)"
    ),
    FieldRule("add_generation_prompt", CHAT, "opt-in", "-", "changes how the template renders"),
    FieldRule(
        "continue_final_message", CHAT, "opt-in", "-", "prefill: the model continues a message"
    ),
    FieldRule("documents", CHAT, "opt-in", "-", "RAG documents rendered by the template"),
    FieldRule("reasoning_effort", CHAT, "opt-in", "-", "passed to the chat template"),
    # --- decided by the gateway alone ----------------------------------------------------------
    *(
        FieldRule(
            name,
            BOTH,
            "never",
            "-",
            "guided decoding is the gateway's (output contracts); vLLM's grammar compilers "
            "crashed on hostile input (CVE-2025-48942..48944)",
        )
        for name in (
            "guided_json",
            "guided_regex",
            "guided_choice",
            "guided_grammar",
            "guided_decoding_backend",
            "guided_whitespace_pattern",
            "structured_outputs",
        )
    ),
    FieldRule(
        "lora_request", BOTH, "never", "-", "the route decides the adapter, never the client"
    ),
    FieldRule(
        "prompt_embeds",
        COMPLETIONS,
        "never",
        "-",
        "tensors vLLM deserializes (CVE-2025-62164: memory corruption, possible RCE)",
    ),
)

FIELD_RULES: MappingProxyType[str, FieldRule] = MappingProxyType(
    {rule.name: rule for rule in FIELDS}
)

NEVER_FORWARDED = frozenset(rule.name for rule in FIELDS if rule.default == "never")


@functools.cache  # a pure function of the table above, asked once per route and endpoint
def default_fields(endpoint: Endpoint) -> frozenset[str]:
    """The fields every route accepts on `endpoint` without configuration."""
    return frozenset(
        rule.name for rule in FIELDS if rule.default == "allowed" and endpoint in rule.endpoints
    )


# The keys of one chat message. Besides OpenAI's, the ones an assistant message returned by vLLM
# carries, so that a client can send an answer back as history unchanged.
MESSAGE_FIELDS = frozenset(
    {
        "role",
        "content",
        "name",
        "tool_calls",
        "tool_call_id",
        "function_call",
        "refusal",
        "annotations",
        "audio",
        "reasoning",
        "reasoning_content",
    }
)

# Content part types that carry media (a route may accept them), and their media type prefix.
MEDIA_PARTS: MappingProxyType[str, str] = MappingProxyType(
    {
        "image_url": "image/",
        "video_url": "video/",
        "audio_url": "audio/",
        "input_audio": "audio/",
    }
)
