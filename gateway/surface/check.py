"""One route's request surface: refuse fields it does not allow and values past its bounds.

Built once per route when a routing table is published (from `gateway/surface/fields.py` and
the route's `requests` config); `check` runs once per request after the protocol models have
typed the known fields, so it only compares keys and sizes. Every refusal is a 400 naming the
parameter: a client learns at once, nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from gateway.errors import ParameterOutOfBounds, UnsupportedParameter
from gateway.surface.config import RequestsConfig
from gateway.surface.fields import (
    ENDPOINT_PATHS,
    MEDIA_PARTS,
    MESSAGE_FIELDS,
    default_fields,
)

METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
_TEXT_PART_KEYS = frozenset({"type", "text"})
_PAYLOAD_KEYS = {
    "image_url": frozenset({"url", "detail"}),
    "video_url": frozenset({"url"}),
    "audio_url": frozenset({"url"}),
    "input_audio": frozenset({"data", "format"}),
}
# No userinfo, backslash or whitespace: the URL must mean the same host to every parser.
_FETCH_URL = re.compile(r"https?://([a-z0-9.\-]+(?::\d{1,5})?)(?:[/?#][^\s\\@]*)?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class MediaRule:
    """One media part type a route accepts."""

    mime_prefix: str
    max_bytes: int
    hosts: frozenset[str]


@dataclass(frozen=True, slots=True)
class RequestSurface:
    """The fields, content parts and bounds of one route, ready to check requests against."""

    allowed: Mapping[str, frozenset[str]]  # endpoint path -> top-level fields
    media: Mapping[str, MediaRule]
    max_n: int
    max_stop: int
    max_stop_chars: int
    max_logprobs: int
    max_content_chars: int
    max_tools: int
    max_tools_bytes: int
    max_logit_bias: int
    seed_min: int
    seed_max: int
    max_tokens: int | None  # the route's ceiling, which min_tokens may not pass

    @classmethod
    def build(cls, config: RequestsConfig, max_tokens: int | None) -> RequestSurface:
        extra = frozenset(config.extra_fields)
        return cls(
            allowed=MappingProxyType(
                {
                    path: default_fields(endpoint) | extra
                    for path, endpoint in ENDPOINT_PATHS.items()
                }
            ),
            media=MappingProxyType(
                {
                    kind: MediaRule(MEDIA_PARTS[kind], part.max_bytes, frozenset(part.hosts))
                    for kind, part in config.content_parts.items()
                }
            ),
            max_n=config.max_n,
            max_stop=config.max_stop,
            max_stop_chars=config.max_stop_chars,
            max_logprobs=config.max_logprobs,
            max_content_chars=config.max_content_chars,
            max_tools=config.max_tools,
            max_tools_bytes=config.max_tools_bytes,
            max_logit_bias=config.max_logit_bias,
            seed_min=config.seed_min,
            seed_max=config.seed_max,
            max_tokens=max_tokens,
        )

    def check(self, path: str, fields: Mapping[str, Any]) -> None:
        """Raise UnsupportedParameter or ParameterOutOfBounds for the first problem found."""
        allowed = self.allowed[path]
        if not allowed.issuperset(fields):
            name = min(set(fields) - allowed)
            raise UnsupportedParameter(
                f"The parameter `{name}` is not accepted by this model (route); the gateway "
                "forwards only the fields it checks (docs/api.md).",
                param=name,
            )
        # Only the fields present are looked at: an ordinary request has three or four.
        for name, value in fields.items():
            bound = _BOUNDS.get(name)
            if bound is not None and value is not None:
                bound(self, value, path, fields)

    def _check_metadata(self, value: Any, path: str, fields: Mapping[str, Any]) -> None:
        _metadata(value)

    def _check_n(self, n: int, path: str, fields: Mapping[str, Any]) -> None:
        _at_most(n, self.max_n, "n")

    def _check_logprobs(self, value: Any, path: str, fields: Mapping[str, Any]) -> None:
        if path == "/v1/completions":  # chat's `logprobs` is a flag
            _logprobs(value, self.max_logprobs, "logprobs")

    def _check_top_logprobs(self, value: Any, path: str, fields: Mapping[str, Any]) -> None:
        _logprobs(value, self.max_logprobs, "top_logprobs")

    def _check_prompt_logprobs(self, value: Any, path: str, fields: Mapping[str, Any]) -> None:
        _logprobs(value, self.max_logprobs, "prompt_logprobs")

    def _check_seed(self, seed: int, path: str, fields: Mapping[str, Any]) -> None:
        if not self.seed_min <= seed <= self.seed_max:
            raise ParameterOutOfBounds(
                f"`seed` must lie in {self.seed_min}..{self.seed_max}.", param="seed"
            )

    def _check_min_tokens(self, value: int, path: str, fields: Mapping[str, Any]) -> None:
        _at_most(value, self.max_tokens, "min_tokens")

    def _check_logit_bias(
        self, bias: dict[str, float], path: str, fields: Mapping[str, Any]
    ) -> None:
        _at_most(len(bias), self.max_logit_bias, "logit_bias", "entries")

    def _check_tools(self, tools: list[Any], path: str, fields: Mapping[str, Any]) -> None:
        _at_most(len(tools), self.max_tools, "tools", "tools")
        _at_most(len(orjson.dumps(tools)), self.max_tools_bytes, "tools", "bytes as JSON")

    def _check_text(self, chars: int, param: str) -> None:
        if chars > self.max_content_chars:
            raise ParameterOutOfBounds(
                f"The request has {chars} characters of text; this model allows at most "
                f"{self.max_content_chars}.",
                param=param,
            )

    def _check_prompt(self, prompt: Any, path: str, fields: Mapping[str, Any]) -> None:
        self._check_text(_prompt_chars(prompt) + len(fields.get("suffix") or ""), "prompt")

    def _check_stop(self, stop: str | list[str], path: str, fields: Mapping[str, Any]) -> None:
        strings = [stop] if isinstance(stop, str) else stop
        _at_most(len(strings), self.max_stop, "stop", "stop strings")
        for text in strings:
            _at_most(len(text), self.max_stop_chars, "stop", "characters per stop string")

    def _check_messages(
        self, messages: list[dict[str, Any]], path: str, fields: Mapping[str, Any]
    ) -> None:
        """Message keys, content parts, and the characters of text in all of them."""
        chars = 0
        for index, message in enumerate(messages):
            if not MESSAGE_FIELDS.issuperset(message):
                name = min(set(message) - MESSAGE_FIELDS)
                raise UnsupportedParameter(
                    f"Messages do not accept the key `{name}`.", param=f"messages.{index}.{name}"
                )
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif content is not None:
                for number, part in enumerate(content):
                    chars += self._check_part(part, f"messages.{index}.content.{number}")
        self._check_text(chars, "messages")

    def _check_part(self, part: dict[str, Any], where: str) -> int:
        """A content part's text length (0 for media), after checking the part."""
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not _TEXT_PART_KEYS.issuperset(part) or not isinstance(text, str):
                raise UnsupportedParameter(
                    "A text part has exactly `type` and `text` (a string).", param=where
                )
            return len(text)
        rule = self.media.get(kind) if isinstance(kind, str) else None
        if rule is None:
            accepted = ", ".join(["text", *sorted(self.media)])
            raise UnsupportedParameter(
                f"Content parts of type `{kind}` are not accepted by this model (route); "
                f"accepted: {accepted}.",
                param=f"{where}.type",
            )
        assert isinstance(kind, str)
        payload = part.get(kind)
        if set(part) != {"type", kind} or not isinstance(payload, dict):
            raise UnsupportedParameter(
                f"A `{kind}` part has exactly `type` and `{kind}` (an object).", param=where
            )
        if not _PAYLOAD_KEYS[kind].issuperset(payload):
            name = min(set(payload) - _PAYLOAD_KEYS[kind])
            raise UnsupportedParameter(
                f"`{kind}` does not accept the key `{name}`.", param=f"{where}.{kind}.{name}"
            )
        if kind == "input_audio":
            data = payload.get("data")
            if not isinstance(data, str) or not isinstance(payload.get("format"), str):
                raise UnsupportedParameter(
                    "`input_audio` needs `data` (base64) and `format`.", param=f"{where}.{kind}"
                )
            _inline_size(data, rule, f"{where}.{kind}.data")
            return 0
        url = payload.get("url")
        if not isinstance(url, str):
            raise UnsupportedParameter(f"`{kind}` needs a `url`.", param=f"{where}.{kind}.url")
        _media_url(url, rule, f"{where}.{kind}.url")
        return 0


def _at_most(value: int | None, limit: int | None, param: str, what: str = "") -> None:
    if value is not None and limit is not None and value > limit:
        unit = f" {what}" if what else ""
        raise ParameterOutOfBounds(
            f"`{param}` has {value}{unit}; this model allows at most {limit}.", param=param
        )


def _metadata(value: Any) -> None:
    """OpenAI's bounds: up to 16 pairs of strings, keys up to 64 characters, values up to 512."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ParameterOutOfBounds(
            "`metadata` must be an object of string values.", param="metadata"
        )
    _at_most(len(value), METADATA_PAIRS, "metadata", "pairs")
    for key, text in value.items():
        _at_most(len(key), METADATA_KEY_CHARS, "metadata", "characters in a key")
        _at_most(len(text), METADATA_VALUE_CHARS, "metadata", "characters in a value")


def _logprobs(value: Any, limit: int, param: str) -> None:
    # prompt_logprobs is not typed by the protocol models (it is opt-in); -1 means the whole
    # vocabulary to vLLM, so anything but 0..limit is refused here.
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ParameterOutOfBounds(f"`{param}` must be an integer in 0..{limit}.", param=param)


def _prompt_chars(prompt: str | list[Any]) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    # Token ids count one each: a list of lists is a batch of token prompts.
    return sum(len(item) if isinstance(item, str | list) else 1 for item in prompt)


_Bound = Callable[[RequestSurface, Any, str, Mapping[str, Any]], None]

# The checks to run for each field, when the field is present and not null.
_BOUNDS: dict[str, _Bound] = {
    "n": RequestSurface._check_n,
    "stop": RequestSurface._check_stop,
    "logprobs": RequestSurface._check_logprobs,
    "top_logprobs": RequestSurface._check_top_logprobs,
    "prompt_logprobs": RequestSurface._check_prompt_logprobs,
    "seed": RequestSurface._check_seed,
    "min_tokens": RequestSurface._check_min_tokens,
    "logit_bias": RequestSurface._check_logit_bias,
    "tools": RequestSurface._check_tools,
    "messages": RequestSurface._check_messages,
    "prompt": RequestSurface._check_prompt,
    "metadata": RequestSurface._check_metadata,
}


def _inline_size(data: str, rule: MediaRule, where: str) -> None:
    decoded = len(data) * 3 // 4
    if decoded > rule.max_bytes:
        raise ParameterOutOfBounds(
            f"Inline media of about {decoded} bytes; this model allows at most {rule.max_bytes}.",
            param=where,
        )


def _media_url(url: str, rule: MediaRule, where: str) -> None:
    """Inline `data:` media of the part's kind within the size limit, or an allowed host."""
    if url[:5].lower() == "data:":
        header, comma, data = url[5:].partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise UnsupportedParameter("Inline media must be a base64 data: URL.", param=where)
        if not header.lower().startswith(rule.mime_prefix):
            raise UnsupportedParameter(
                f"This part carries `{rule.mime_prefix}*` media, not `{header[:40]}`.", param=where
            )
        _inline_size(data, rule, where)
        return
    fetched = _FETCH_URL.fullmatch(url)
    if fetched is None or fetched.group(1).lower() not in rule.hosts:
        raise UnsupportedParameter(
            "Media must be inline (a base64 data: URL); the backend fetches URLs only from "
            "the hosts this model (route) allows.",
            param=where,
        )
