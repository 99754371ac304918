"""Who judges, and who answers: a local model (a folder or hub id, jielong.hub.open_model) or
any OpenAI-compatible endpoint (`jielong serve`, vLLM, llama.cpp's server, OpenAI …).

A judge is a callable `judge(prompts, done) -> [Reply]`: each JudgePrompt's messages in,
one Reply each out (`done()` after each, for the progress bar). Two kinds of reply:
- generate: the judge writes (greedily) an explanation and a verdict, read by
  jielong.eval.verdicts.parse_verdict; the only way an endpoint judges, since a chat API
  gives log-probabilities of what it generated, not of continuations we name;
- logprob (a local judge only): the prompt asks for the verdict alone and the three
  continuations "[[A]]", "[[B]]", "[[C]]" are scored by log-likelihood after the rendered
  prompt (jielong.eval.loglikelihood, as lm-eval scores a choice); the likeliest is the
  verdict. Always a verdict, and far more stable for a small judge, which seldom writes a
  well-formed "[[A]]" on its own; it is the default for a local judge.

Prompts go through the model's chat template when it has one (a template that refuses a
system message gets it folded into the user message), else as plain text with a cue.

The endpoint is spoken to with the standard library's urllib (no extra dependency):
POST BASE/chat/completions, temperature 0; a connection error, a timeout, 429 or 5xx is
retried with exponential backoff (a Retry-After header is honoured, up to 30 s); an endpoint
still unreachable after the retries is one clear error, a 400 (e.g. a prompt longer than the
judge's context) makes that one judgment's reply an error (no verdict), 401/403 (a key) and
404 (no such model or route) stop the run with what to fix. The API key comes from an
environment variable the user names.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from jielong.errors import UserError
from jielong.eval.loglikelihood import choice_logprobs, encode_pair
from jielong.eval.verdicts import VERDICTS, JudgePrompt
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams

BACKOFF = 0.5  # seconds before the first retry; doubled each time
MAX_WAIT = 30.0


@dataclass
class Reply:
    text: str | None = None  # what the judge wrote (generate)
    logprobs: dict[str, float] | None = None  # {"A": …, "B": …, "C": …} (logprob)
    error: str | None = None  # why there is no reply


# ----------------------------------------------------------------------------- local models


def render(tok, messages: list[dict], cue: str = "") -> str:
    """`messages` as the model reads them before its reply: its chat template with the
    generation prompt, or (no template) the contents one after another and `cue`."""
    if tok.config.get("chat_template"):
        try:
            return tok.apply_chat_template(messages, add_generation_prompt=True)
        except UserError:  # e.g. "System role not supported": fold it into the user turn
            if messages[0]["role"] != "system" or len(messages) < 2:
                raise
            merged = {"role": messages[1]["role"],
                      "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
            return tok.apply_chat_template([merged, *messages[2:]], add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n" + cue


def prompt_ids(tok, messages: list[dict], cue: str = "") -> list[int]:
    text = render(tok, messages, cue)
    if tok.config.get("chat_template"):
        return tok.backend.encode(text, add_special_tokens=False).ids  # as encode_chat does
    return tok.encode(text)


@torch.no_grad()
def generate_replies(model, tok, stops: set[int], conversations: list[list[dict]],
                     max_tokens: int, batch_size: int, done: Callable[[], None],
                     cue: str = "") -> list[Reply]:
    """Greedy replies, `batch_size` prompts at a time; a prompt that leaves no room in the
    context gets an error instead."""
    n_ctx = model.config.max_position_embeddings
    encoded = [prompt_ids(tok, c, cue) for c in conversations]
    out: list[Reply | None] = [None] * len(encoded)
    fits = []
    for i, ids in enumerate(encoded):
        if len(ids) + 1 > n_ctx:
            out[i] = Reply(error=f"prompt of {len(ids)} tokens leaves no room in the model's "
                                 f"context of {n_ctx}")
            done()
        else:
            fits.append(i)
    for k in range(0, len(fits), batch_size):
        rows = fits[k:k + batch_size]
        room = n_ctx - max(len(encoded[i]) for i in rows)
        s = SamplingParams(max_tokens=min(max_tokens, room), temperature=0.0)
        for i, ids in zip(rows, generate_ids(model, [encoded[i] for i in rows], s, stops),
                          strict=True):
            out[i] = Reply(text=tok.decode(ids, skip_special_tokens=True).strip())
            done()
    return out


VERDICT_CUE = "Verdict: "
EXPLAIN_CUE = "Evaluation: "


class LocalJudge:
    """A model of our own judging, by the likeliest verdict (logprob) or by what it writes."""

    def __init__(self, model, tok, stops: set[int], verdict: str = "logprob",
                 max_tokens: int = 512, batch_size: int = 8):
        self.model, self.tok, self.stops = model, tok, stops
        self.verdict, self.max_tokens, self.batch_size = verdict, max_tokens, batch_size

    def __call__(self, prompts: list[JudgePrompt], done: Callable[[], None]) -> list[Reply]:
        if self.verdict == "generate":
            return generate_replies(self.model, self.tok, self.stops, [p.messages for p in prompts],
                                    self.max_tokens, self.batch_size, done, EXPLAIN_CUE)
        out = []
        n_ctx = self.model.config.max_position_embeddings
        for p in prompts:
            text = render(self.tok, p.messages, VERDICT_CUE)
            pairs = [encode_pair(self.tok, text, f"[[{v}]]") for v in VERDICTS]
            need = len(pairs[0][0]) + max(len(c) for _, c in pairs) - 1
            if need > n_ctx:
                out.append(Reply(error=f"prompt of {need} tokens is longer than the judge's "
                                       f"context of {n_ctx}"))
            else:
                scores = choice_logprobs(self.model, pairs[0][0], [c for _, c in pairs])
                out.append(Reply(logprobs=dict(zip(VERDICTS, scores, strict=True))))
            done()
        return out


# ----------------------------------------------------------------------------- an endpoint


class Endpoint:
    """An OpenAI-compatible server at `base_url` (…/v1)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 4):
        self.base = base_url.rstrip("/")
        self.key, self.timeout, self.retries = api_key, timeout, retries

    def request(self, path: str, body: dict | None = None) -> dict:
        """The JSON answer to GET (no body) or POST `body`, retried on what may pass; a
        UserError when the endpoint cannot be reached or wants a key; another 4xx HTTPError
        as is (it is about this request)."""
        url = self.base + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.retries + 1):
            wait = BACKOFF * 2 ** attempt
            try:
                req = urllib.request.Request(url, data=data, headers=headers,
                                             method="POST" if data is not None else "GET")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    problem = f"HTTP {e.code}: {server_message(e)}"
                    after = e.headers.get("Retry-After", "") if e.headers else ""
                    wait = float(after) if after.replace(".", "", 1).isdigit() else wait
                elif e.code in (401, 403):
                    raise UserError(f"{url}: HTTP {e.code} {server_message(e)}; the endpoint wants "
                                    "an API key: put it in an environment variable and pass "
                                    "--api_key_env NAME") from None
                else:
                    raise
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                problem = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
            except json.JSONDecodeError:
                raise UserError(f"{url}: the answer is not JSON; is this an OpenAI-compatible "
                                "endpoint?") from None
            if attempt < self.retries:
                time.sleep(min(wait, MAX_WAIT))
        raise UserError(f"cannot reach {url} after {self.retries + 1} tries ({problem}); is the "
                        "server running (e.g. `jielong serve --model DIR`) and is --judge_url "
                        "right?")

    def models(self) -> list[str]:
        """The model names the endpoint lists ([] when it has no such route)."""
        try:
            listed = self.request("/models").get("data", [])
        except urllib.error.HTTPError:
            return []
        return [m.get("id", "") for m in listed if isinstance(m, dict)]


def server_message(e: urllib.error.HTTPError) -> str:
    """The error message of an OpenAI-style error body, else the HTTP reason."""
    try:
        body = json.loads(e.read().decode("utf-8", errors="replace"))
        return str(body["error"]["message"] if isinstance(body.get("error"), dict)
                   else body.get("error") or body.get("detail") or e.reason)
    except (ValueError, AttributeError, KeyError, OSError):
        return str(e.reason)


class EndpointJudge:
    """A judge behind an OpenAI-compatible chat completions endpoint; `workers` requests at
    a time (a server that batches, as `jielong serve` does, answers them together)."""

    def __init__(self, endpoint: Endpoint, model: str, max_tokens: int = 512, workers: int = 4):
        self.endpoint, self.model = endpoint, model
        self.max_tokens, self.workers = max_tokens, workers

    def one(self, p: JudgePrompt) -> Reply:
        body = {"model": self.model, "messages": p.messages, "temperature": 0,
                "max_tokens": self.max_tokens}
        try:
            r = self.endpoint.request("/chat/completions", body)
        except urllib.error.HTTPError as e:
            if e.code == 404:  # no such model or route: no request would fare better
                raise UserError(f"{self.endpoint.base}/chat/completions: HTTP 404 "
                                f"{server_message(e)}; check --judge_model and --judge_url (an "
                                "OpenAI-compatible base URL usually ends in /v1)") from None
            return Reply(error=f"HTTP {e.code}: {server_message(e)}")  # e.g. a prompt too long
        try:
            return Reply(text=r["choices"][0]["message"].get("content") or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            return Reply(error=f"no choices[0].message in the answer: {json.dumps(r)[:200]}")

    def __call__(self, prompts: list[JudgePrompt], done: Callable[[], None]) -> list[Reply]:
        def one(p):
            r = self.one(p)
            done()
            return r

        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            futures = [pool.submit(one, p) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
