"""OpenAI request models: what the gateway checks before a body may go upstream.

They mirror OpenAI's (and vLLM's) fields and types so that wrong input fails here with a 422
naming the field. They type every field on the allowlist (`gateway/surface/fields.py`); which
fields a route forwards, and their bounds, are checked after them (`gateway/surface/check.py`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Guided-decoding inputs reach vLLM's grammar compilers, which have crashed on hostile input
# (CVE-2025-48942..48944); the gateway alone decides what goes there (output contracts).
RESERVED_FIELDS = frozenset(
    {
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
        "structured_outputs",
        "lora_request",
    }
)

Stop = str | list[str] | None
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class _OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_OpenAIModel):
    """One message of a conversation; content is text or a list of typed parts."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_OpenAIModel):
    include_usage: bool | None = None


class _SamplingFields(_OpenAIModel):
    model: Annotated[str, Field(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: NonNegativeInt | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: float | None = None
    n: PositiveInt | None = None
    stop: Stop = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    # vLLM's sampling extensions on the allowlist (gateway/surface/fields.py).
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: NonNegativeInt | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None


class ChatCompletionRequest(_SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: NonNegativeInt | None = None
    logprobs: bool | None = None
    top_logprobs: NonNegativeInt | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    logprobs: NonNegativeInt | None = None
    response_format: dict[str, Any] | None = None


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`: a route, as clients see it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "turnout"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RouteContractView(BaseModel):
    """A route's output contract, as the clients that must match it see it."""

    json_schema: dict[str, Any] | None = Field(
        serialization_alias="schema", description="the JSON Schema every answer meets, or null"
    )
    request_schema: Literal["reject", "ignore", "enforce_both"] | None = Field(
        description="what a request whose own response_format conflicts with it gets"
    )


class RouteCard(ModelCard):
    """`GET /v1/models/{route}`: the model card, plus the route's contract (`turnout`)."""

    turnout: RouteContractView


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error the gateway itself produces."""

    error: ErrorDetail
