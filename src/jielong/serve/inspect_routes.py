"""The web chat's "Look inside" panel, served: the next-token view and the attention maps of
jielong.inspect (the same functions `jielong inspect next|attention` prints and draws),
run on the served model.

Routes (under /api, with the web chat's store: jielong.serve.app mounts them beside
jielong.serve.chat_routes):
- POST /api/inspect/next {text, k?} or {message_id, prefix?, k?}: the k (1 to 50, default
  10) likeliest next tokens [{id, text, prob, whole}] (jielong.inspect.nexttoken.alternatives:
  the softmax of the model's last logits, each token shown as whole characters), and the
  prompt's `pieces` merged into whole characters (jielong.inspect.pieces). With a
  `message_id` (an assistant reply) the prompt is the reply's branch as the chat rendered it
  (the conversation's system prompt, the messages down to the question, the chat template;
  oldest turns dropped as generation drops them), the reply begun with `prefix`; the answer
  adds `reply`, the reply's own pieces, so the page can show it as clickable tokens and ask
  what the model had at piece i with prefix = the pieces before it. (Passages and tool
  results a reply was given are not replayed: the view reads the plain branch.) Picking an
  alternative continues the reply from there: POST /api/messages/{mid}/continue
  (jielong.serve.chat_routes).
- POST /api/inspect/attention {text | message_id, layer?, token?}: the text's `pieces`, the
  per-layer per-head attention `weights` merged onto them (jielong.inspect.attention:
  attention_weights + merge_matrix; every row sums to 1), each layer's head `mean`, the
  `rollout`, and the `summary` of where `token` (default: the last piece) looks most. At most
  MAX_TOKENS tokens (a 400 beyond). Every head of every layer is sent when that is at most
  ALL_HEADS values; otherwise only `layer`'s heads (default 0), the others null, and the page
  asks again for the layer it shows.

The forward runs on the engine's own thread between two of its steps (Engine.call), under
inference_mode and without the KV cache, so it cannot disturb the replies being generated.
A server that passes text to an upstream engine has no model here: both routes answer a 400
(code needs_local_model) saying so. Bodies are read and checked by jielong.serve.body.
"""

from __future__ import annotations

import asyncio

import torch
from fastapi import APIRouter, Depends, Request
from pydantic import Field

from jielong.errors import UserError
from jielong.infer.context import fit_conversation
from jielong.inspect.attention import attention_weights, rollout, summary
from jielong.inspect.nexttoken import alternatives
from jielong.inspect.pieces import merge_matrix, merged_pieces
from jielong.serve.body import read_body
from jielong.serve.chat_routes import store_call, store_of
from jielong.serve.errors import ApiError, user_error
from jielong.serve.guard import authorize
from jielong.serve.schemas import MAX_CHARS, Body
from jielong.serve.served import Served, served

MAX_TOKENS = 128  # of a text the attention view reads: its maps are tokens × tokens per head
ALL_HEADS = 2_000_000  # attention values sent at once (layers × heads × pieces²)
DIGITS = 5  # decimals of a weight sent
NEEDS_MODEL = ("inspection needs a local model: this server passes text to an upstream engine "
               "and has no model to look inside; serve a model folder (jielong serve --model "
               "DIR) to use the Look inside panel")

router = APIRouter(prefix="/api/inspect", dependencies=[Depends(authorize)])


class NextIn(Body):
    text: str | None = Field(None, max_length=MAX_CHARS)
    message_id: str | None = None
    prefix: str = Field("", max_length=MAX_CHARS)
    k: int = Field(10, ge=1, le=50)


class AttentionIn(Body):
    text: str | None = Field(None, max_length=MAX_CHARS)
    message_id: str | None = None
    layer: int | None = Field(None, ge=0)
    token: str | None = Field(None, max_length=100)


def local(request: Request) -> Served:
    """The served model's Served; a 400 when an upstream engine has the model."""
    s = served(request)
    if s.upstream:
        raise ApiError(400, NEEDS_MODEL, code="needs_local_model")
    return s


async def on_engine(s: Served, work, adapter: str | None = None):
    """`work(model)` run on the engine's thread (Engine.call), awaited."""
    try:
        return await asyncio.wrap_future(s.engine.call(work, adapter))
    except UserError as e:
        raise user_error(e) from None


def one_of(body: NextIn | AttentionIn) -> None:
    if (body.text is None) == (body.message_id is None):
        raise ApiError(400, "give either text (a text to look at) or message_id (a reply of "
                            "the chat), not both or neither", param="text")


async def reply_of(request: Request, mid: str) -> dict:
    """The assistant message `mid` (404 unknown, 400 a user message)."""
    m = await store_call(store_of(request).message, mid)
    if m["role"] != "assistant":
        raise ApiError(400, f"message_id: message {mid} is a user message; inspect a reply",
                       param="message_id")
    return m


def adapter_of(s: Served, m: dict) -> str | None:
    """The adapter that wrote the reply `m`, when it is still served (else the base)."""
    return m["model"] if m.get("model") in s.engine.adapters else None


async def chat_ids(request: Request, s: Served, m: dict, prefix: str) -> list[int]:
    """The prompt the reply `m` was generated from, the reply begun with `prefix`."""
    store = store_of(request)
    conv = await store_call(store.conversation, m["conversation_id"], False)
    history = await store_call(store.path, m["parent_id"])
    messages = [{"role": x["role"], "content": x["content"]} for x in history]
    system = conv["system_prompt"] or s.system_prompt
    if system:
        messages.insert(0, {"role": "system", "content": system})

    def encode(ms: list[dict]) -> list[int]:
        return s.chat_prompt(ms, "message_id", prefill=prefix)

    return fit_conversation(messages, encode, s.engine.context, 1)[1]


def fits(s: Served, ids: list[int], param: str) -> list[int]:
    if not ids:
        raise ApiError(400, f"{param}: the text is empty; give a text to look at", param=param)
    if len(ids) >= s.engine.context:
        raise ApiError(400, f"{param}: {len(ids)} tokens, but this model's context is "
                            f"{s.engine.context}; shorten it", param=param,
                       code="context_length_exceeded")
    return ids


@router.post("/next")
async def next_tokens(request: Request):
    s = local(request)
    body = await read_body(request, NextIn)
    one_of(body)
    tok, out, adapter = s.tok, {}, None
    if body.message_id is not None:
        m = await reply_of(request, body.message_id)
        adapter = adapter_of(s, m)
        ids = fits(s, await chat_ids(request, s, m, body.prefix), "message_id")
        out["reply"] = [t for t, _ in merged_pieces(tok, tok.encode(m["content"]))]
    else:
        if body.prefix:
            raise ApiError(400, "prefix: goes with message_id (a reply begun so); put it "
                                "in text", param="prefix")
        ids = fits(s, tok.encode(body.text), "text")
    top = await on_engine(s, lambda model: alternatives(model, tok, ids, body.k), adapter)
    return {"pieces": [t for t, _ in merged_pieces(tok, ids)], "top": top, **out}


@router.post("/attention")
async def attention(request: Request):
    s = local(request)
    body = await read_body(request, AttentionIn)
    one_of(body)
    text = body.text
    if body.message_id is not None:
        text = (await store_call(store_of(request).message, body.message_id))["content"]
    ids = s.tok.encode(text)
    param = "text" if body.text is not None else "message_id"
    if not ids:
        raise ApiError(400, f"{param}: the text is empty; give a text to look at", param=param)
    if len(ids) > MAX_TOKENS:
        raise ApiError(400, f"{param}: {len(ids)} tokens; the attention view reads at most "
                            f"{MAX_TOKENS} (its maps are tokens × tokens for every head): "
                            "give a shorter text", param=param, code="too_many_tokens")
    cfg = s.engine.model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    if body.layer is not None and body.layer >= L:
        raise ApiError(400, f"layer: {body.layer}, but this model has layers 0 to {L - 1}",
                       param="layer")
    pieces = merged_pieces(s.tok, ids)
    texts, spans = [t for t, _ in pieces], [sp for _, sp in pieces]
    weights = await on_engine(s, lambda model: attention_weights(model, ids))
    merged, rolled = merge_matrix(weights, spans), merge_matrix(rollout(weights), spans)
    try:
        about = summary(merged, rolled, texts, body.token)
    except UserError as e:
        raise ApiError(400, f"token: {e}".replace("--token ", ""), param="token") from None
    P = len(texts)
    every = L * H * P * P <= ALL_HEADS
    shown = body.layer or 0
    return {"pieces": texts, "layers": L, "heads": H,
            "weights": [rounded(merged[li]) if every or li == shown else None for li in range(L)],
            "mean": rounded(merged.mean(1)), "rollout": rounded(rolled), "summary": about}


def rounded(t: torch.Tensor) -> list:
    return t.double().round(decimals=DIGITS).tolist()
