"""What the server serves: the engine (already started), its tokenizer, the model's name and
its LoRA adapters' names, and the model's generation_config. The app keeps one `Served` on
`app.state.served` (`served(request)` gives it to a route), and every route, /v1 and the web
chat's /api, turns a request into the engine's work through it, with the same defaults, checks
and errors:

- `adapter_for(name)`: the served model's name is the base, an adapter's name that adapter
  (404 model_not_found otherwise);
- `sampling(body, max_tokens, logprobs)`: the request's sampling settings, and what it leaves
  out from generation_config.json (temperature, top_p, top_k, min_p, repetition_penalty), as
  the model's authors meant it to be sampled;
- `fit(prompt, params, …)`: a prompt that does not fit the context is a 400
  context_length_exceeded, and whatever else the engine refuses a 400 naming the field;
- `chat_prompt(messages, param)`: a conversation rendered with the model's chat template;
- `rails`: the safety policy's rails (jielong.safety.rails, applied by
  jielong.serve.safety_rails).

With an upstream engine (jielong.serve.upstream: `jielong serve --upstream URL`) there is
no tokenizer (`tok` is None): a prompt is the chat's messages or the text (`chat_prompt`,
`text_prompt`), which the upstream renders and counts; `fit` checks what can be checked
without tokens, `count` is 0, `measure` an upper bound, and what needs token ids (logprobs,
token-id prompts) is a 400.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace

import jinja2
from fastapi import Request

from jielong.errors import UserError
from jielong.infer.engine import Engine
from jielong.infer.sampling import SamplingParams
from jielong.safety.policy import off_policy
from jielong.safety.rails import Rails
from jielong.serve.errors import ApiError, user_error
from jielong.serve.metrics import Metrics
from jielong.serve.schemas import MAX_CHOICES, SamplingBody
from jielong.serve.upstream import Chat, Text, UpstreamSampling, most_tokens

UPSTREAM_IDS = ("token ids need the model's tokenizer, and this server passes text to an "
                "upstream engine; send text")


@dataclass
class Served:
    engine: Engine  # or jielong.serve.upstream.UpstreamEngine
    tok: object  # None with an upstream engine
    model_name: str
    metrics: Metrics
    generation_config: dict = field(default_factory=dict)
    system_prompt: str | None = None  # for conversations that bring none
    max_messages: int = 256  # of one /v1/chat/completions request
    max_message_chars: int = 100_000
    rails: Rails = field(default_factory=lambda: Rails(off_policy()))  # jielong.safety.rails
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        self.token_text = functools.lru_cache(maxsize=65536)(self._token_text)

    def _token_text(self, t: int) -> tuple[str, list[int]]:
        """(text, bytes) of token `t`, as OpenAI's logprobs give them (cached: token_text)."""
        b = self.tok.token_bytes(t)
        return b.decode("utf-8", errors="replace"), list(b)

    @property
    def upstream(self) -> bool:
        """Whether an upstream engine renders and counts the prompts (no tokenizer here)."""
        return self.tok is None

    def count(self, prompt) -> int:
        """The prompt's tokens as counted here (0 for an upstream's prompt: it counts them)."""
        return len(prompt) if isinstance(prompt, list) else 0

    def measure(self, messages: list[dict], param: str) -> int:
        """The tokens of `messages` as a prompt: counted, or at most so many upstream."""
        if self.upstream:
            return most_tokens(messages)
        return len(self.chat_prompt(messages, param))

    @property
    def vocab(self) -> int:
        return self.engine.model.config.vocab_size

    def adapter_for(self, name: str | None) -> str | None:
        if name is None or name == self.model_name:
            return None
        if name in self.engine.adapters:
            return name
        served = ", ".join([self.model_name, *self.engine.adapters])
        raise ApiError(404, f"the model {name!r} does not exist here; served: {served}",
                       param="model", code="model_not_found")

    def sampling(self, body: SamplingBody, max_tokens: int | None,
                 logprobs: int | None) -> SamplingParams:
        gen = self.generation_config
        sampled = gen.get("do_sample", True) is not False

        def pick(value, key, default):
            if value is not None:
                return value
            v = gen.get(key)
            return v if isinstance(v, int | float) and not isinstance(v, bool) else default

        if body.logit_bias:
            raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")
        if logprobs is not None and self.upstream:
            raise ApiError(400, "logprobs are not passed through from the upstream engine",
                           param="logprobs")
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=pick(body.temperature, "temperature", 1.0) if sampled or
            body.temperature is not None else 0.0,
            top_p=pick(body.top_p, "top_p", 1.0),
            top_k=pick(body.top_k, "top_k", 0),
            min_p=pick(body.min_p, "min_p", 0.0),
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repetition_penalty=pick(body.repetition_penalty, "repetition_penalty", 1.0),
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            ignore_eos=body.ignore_eos, seed=body.seed, logprobs=logprobs)
        if self.upstream:  # what the request leaves out, the upstream's model decides
            return UpstreamSampling(**params.__dict__, given=frozenset(
                k for k in UpstreamSampling.DEFAULTED if getattr(body, k, None) is not None))
        return params

    def fit(self, prompt: list[int], params: SamplingParams, what: str, param: str,
            adapter: str | None, max_name: str = "max_tokens",
            rename: dict[str, str] | None = None) -> None:
        """Check one prompt against the context, then everything else the engine checks
        (an upstream's prompt: the upstream checks the context)."""
        ctx, n = self.engine.context, self.count(prompt)
        if not self.upstream:
            self.fit_context(n, ctx, params, what, param, max_name)
        try:
            self.engine.check(prompt, params, adapter)
        except UserError as e:
            raise user_error(e, rename) from None

    def fit_context(self, n: int, ctx: int, params: SamplingParams, what: str, param: str,
                    max_name: str) -> None:
        """A prompt of `n` tokens and max_tokens against the context of `ctx` tokens."""
        if not n:
            raise ApiError(400, f"the {what} is empty: give at least one token", param=param)
        if n >= ctx:
            raise ApiError(400, f"the {what} is {n} tokens, but this model's context is {ctx} "
                                f"tokens (at least one is needed for the reply); shorten it",
                           param=param, code="context_length_exceeded")
        if params.max_tokens is not None and n + params.max_tokens > ctx:
            raise ApiError(400, f"the {what} ({n} tokens) + {max_name} ({params.max_tokens}) is "
                                f"more than this model's context of {ctx} tokens; lower "
                                f"{max_name} to at most {ctx - n}",
                           param=max_name, code="context_length_exceeded")

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        """`ids`, when every one is in the vocabulary (a 400 naming `param` otherwise)."""
        if self.upstream:
            raise ApiError(400, f"{param}: {UPSTREAM_IDS}", param=param)
        vocab = self.vocab
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(400, f"{param}: token id {bad} is outside the vocabulary "
                                f"(0 to {vocab - 1})", param=param)
        return ids

    def jobs(self, prompts: list[list[int]], params: SamplingParams, adapter: str | None,
             n: int) -> list[tuple[list[int], SamplingParams, str | None]]:
        """The engine requests for `n` choices of each prompt; choice j samples with seed + j."""
        if len(prompts) * n > MAX_CHOICES:
            raise ApiError(400, f"{len(prompts)} prompts × n={n} is more than {MAX_CHOICES} "
                                "choices in one request", param="n")
        out = []
        for prompt in prompts:
            for j in range(n):
                seed = None if params.seed is None else (params.seed + j) % 2**64
                out.append((prompt, replace(params, seed=seed), adapter))
        return out

    def chat_prompt(self, messages: list[dict], param: str, tools: list[dict] | None = None,
                    prefill: str = "") -> list[int]:
        """The token ids of `messages` rendered with the model's chat template, ready for the
        assistant's reply (the template given `tools`, and the reply begun with `prefill`); a
        conversation the template refuses is a 400 naming `param`. With an upstream engine,
        the messages, which it renders with its own template."""
        if self.upstream:
            return Chat(messages)
        try:
            rendered, _ = self.tok.render_chat(messages, add_generation_prompt=True, tools=tools)
            rendered += prefill
        except UserError as e:
            raise ApiError(400, f"{param}: {e}", param=param) from None
        except jinja2.TemplateError as e:
            raise ApiError(400, f"{param}: the model's chat template cannot render this "
                                f"conversation ({type(e).__name__}: {e})", param=param) from None
        return self.tok.encode(rendered)

    def text_prompt(self, text: str):
        """A text completion's prompt: its token ids, or the text for an upstream engine."""
        return Text(text) if self.upstream else self.tok.encode(text)


def served(request: Request) -> Served:
    """What the request's app serves."""
    return request.app.state.served
