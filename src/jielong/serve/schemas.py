"""The request bodies the server accepts, as pydantic models: OpenAI's (chat and text
completions, embeddings) and the web chat's (conversations, messages, ratings, arena). Unknown
fields are ignored, as OpenAI's API does; a field of the wrong type or value is a 400 naming
it (jielong.serve.body.read_body). Limits are checked here when they need no model: the
number of stop strings and of choices, the length of a chat message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4  # stop sequences per request, as OpenAI
MAX_CHOICES = 128  # n, and prompts × n for /v1/completions
MAX_CHARS = 100_000  # of one web chat message (or system prompt, or comment), as /v1's default
MAX_TITLE = 1000  # characters of a conversation's title


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ----------------------------------------------------------------------------- /v1


class StreamOptions(Body):
    include_usage: bool = False


class SamplingBody(Body):
    """The sampling fields chat and text completions share (and the web chat's settings)."""

    model: str | None = None  # None: the base model
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: go on past the end-of-turn tokens
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, not {len(v)}")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if not 1 <= v <= MAX_CHOICES:
            raise ValueError(f"must be between 1 and {MAX_CHOICES}, not {v}")
        return v


class ContentPart(Body):
    type: str
    text: str | None = None


class FunctionCall(Body):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(Body):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # the call a tool message answers


class RagOptions(Body):
    """jielong's extension of a chat request: which document collection to answer from
    (None: the server's default) and how many passages (jielong.serve.documents)."""

    collection: str | None = None
    k: int | None = None


class ChatRequest(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    rag: bool | RagOptions | None = None  # false: no retrieval; None or true: the default
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None


class EmbeddingRequest(Body):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class ModerationRequest(Body):
    model: str | None = None
    input: str | list[str]


# ----------------------------------------------------------------------------- the web chat's /api


class Settings(BaseModel):
    """Sampling settings of a conversation or a request; other keys are kept as given."""

    model_config = ConfigDict(extra="allow")
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    model: str | None = None
    rag: str | bool | None = None  # the document collection (false: none; unset: the default)
    tools: bool | None = None  # the model may call the web chat's tools (jielong.serve.chat_tools)


class ConversationIn(Body):
    title: str | None = Field(None, max_length=MAX_TITLE)
    system_prompt: str | None = Field(None, max_length=MAX_CHARS)
    settings: Settings | None = None


def message_text(v: str) -> str:
    """A web chat message: not blank, at most MAX_CHARS characters."""
    if not v.strip():
        raise ValueError("must not be empty")
    if len(v) > MAX_CHARS:
        raise ValueError(f"{len(v)} characters, more than this server's limit of {MAX_CHARS}")
    return v


class Generate(Body):
    model: str | None = None
    settings: Settings | None = None


class MessageIn(Generate):
    parent_id: str | None = None
    content: str
    _content = field_validator("content")(message_text)


class EditIn(Generate):
    content: str
    _content = field_validator("content")(message_text)


class ContinueIn(Generate):
    """A reply continued from a beginning the user picked (the Look inside panel's
    alternative token): `prefix`, the reply's text so far."""

    prefix: str = Field(..., max_length=MAX_CHARS)


class RatingIn(Body):
    value: int
    reasons: list[str] = Field([], max_length=32)
    comment: str = Field("", max_length=MAX_CHARS)


class ArenaIn(Body):
    """A question for the arena: two served models answer it side by side."""

    content: str
    system_prompt: str | None = Field(None, max_length=MAX_CHARS)
    settings: Settings | None = None
    _content = field_validator("content")(message_text)


class VoteIn(Body):
    winner: Literal["a", "b", "tie", "both_bad"]
