"""The OpenAI-compatible routes under /v1, what the official `openai` client and curl speak:

- POST /v1/chat/completions: messages rendered with the model's chat template; `model` is the
  served model's name, or a loaded LoRA adapter's name (that adapter for this request);
  sampling (temperature, top_p, top_k, min_p, presence/frequency/repetition penalties, stop,
  seed, max_tokens), n choices, logprobs + top_logprobs, streaming (server-sent events) with
  stream_options.include_usage; response_format json_object or json_schema (strict or not):
  the reply held to it by constrained decoding (jielong.infer.constrain), so it always parses
  and validates unless max_tokens cuts it ("length"); a schema llguidance refuses is a 400;
- POST /v1/completions: a text prompt (or several, or token ids), the same options, echo;
- POST /v1/embeddings: unit-length mean-pooled final hidden states, as floats or base64;
- POST /v1/moderations: jielong.safety.moderate under the server's policy and detectors (the
  default policy when the server runs with --safety off), in OpenAI's shape
  (results of flagged, categories, category_scores: jielong's categories, also under
  OpenAI's names where it has one, "self-harm", "sexual/minors", "illicit"; and evidence);
- GET /v1/models, /v1/models/{id}.

Sampling settings a request leaves out come from the model's generation_config.json
(jielong.serve.served.Served.sampling); replies stop at the model's end-of-turn tokens (the
engine's stop ids). Every route needs the API key when the server has one
(jielong.serve.guard.authorize). Chat and text completions pass admission first
(jielong.serve.admission: 400 request_too_large, 429 rate_limit_exceeded, 503
server_overloaded, with Retry-After) and may be cut short by the request timeout or a
shutdown: finish_reason "length" on the choices not done, the stream still ending in [DONE].

Tool calling (jielong.infer.tools): `tools` go to the chat template, which lists them the
model's way; the reply is read for calls in the template's format (Hermes, Llama 3.1, Mistral)
into `tool_calls` with ids, finish_reason "tool_calls" when it ended by calling. tool_choice
"none" leaves the tools out and the reply unread; "required" and a named function hold the
reply to calls of those tools with arguments that follow their schemas, by constrained
decoding (jielong.infer.constrain.tool_call_grammar; Mistral's template, whose call marker is
a special token, gets the reply begun as a call instead: jielong.infer.tools.prefill);
parallel_tool_calls false keeps the first. Streamed, a call comes as its id and name, then its arguments in pieces, no tag in the
content. A call not well formed is reported in the message's (the last delta's)
`tool_call_errors`, with finish_reason "stop", never passed on. The history's assistant
`tool_calls` (arguments a JSON object's text, ids used once) and `tool` messages (answering a
call id made earlier) are checked, a clear 400 otherwise.

The safety rails (jielong.serve.safety_rails) guard chat and text completions: the input
rail reads the newest user message (or the prompt), and a message it blocks is answered by
the policy (a refusal, or a caring reply with crisis lines) with finish_reason
"content_filter" and no generation; the output rail checks every choice as it grows and
stops it the same way. The decisions come back in a `safety` field beside `choices` (and on
the last chunk of a stream), and are kept in the store.

The user's documents (`jielong serve --rag`, jielong.serve.documents): after the input rail
lets the newest user message through, it is the question; the passages retrieved for it go
into that message as numbered, quoted data (jielong.rag.answer.rag_messages: the request's
system message stays first, the earlier turns stay as they were), as many as fit the
context with room for the reply (max_tokens, else a quarter of the context). With none
relevant the reply is the decline text ("I don't know: ..."), finish_reason "stop", nothing
generated. A request picks the collection with `"rag": {"collection": NAME, "k": 4}`, or
turns retrieval off with `"rag": false` (the `openai` client: extra_body). The reply's
message then has `sources` (every passage given: {n, id, source, page, heading, score,
quote}) and `citations` (those its [n] markers name); the response has both beside
`choices` too (choice 0's), and a stream has them on each choice's last chunk (the one with
its finish_reason). OpenAI's clients keep fields they do not know (`.model_extra`).

With an upstream engine (`jielong serve --upstream URL`, jielong.serve.upstream) the same
routes run the same rails and retrieval, and the upstream generates: chats go to it as
messages and text completions as text, embeddings are its own (the request passed on);
the model list is its models.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import numpy as np
from fastapi import APIRouter, Depends, Request

from jielong.errors import UserError
from jielong.infer import constrain
from jielong.infer.context import reply_budget
from jielong.infer.engine import TokenLogprob
from jielong.infer.sampling import MAX_TOP_LOGPROBS
from jielong.infer.tools import (
    StreamParser,
    check_tool_choice,
    check_tools,
    parse,
    prefill,
    template_messages,
    tool_style,
)
from jielong.rag.answer import decline_text
from jielong.safety.moderate import moderate
from jielong.serve.admission import admit
from jielong.serve.body import read_body
from jielong.serve.documents import fit, ground, library_of
from jielong.serve.errors import ApiError
from jielong.serve.guard import authorize
from jielong.serve.safety_rails import OutputRail, check_input, record, v1_recorder
from jielong.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModerationRequest,
    RagOptions,
)
from jielong.serve.served import Served, served
from jielong.serve.streaming import Batch, collect, event_stream, failed, openai_stream, sse

MAX_EMBED_INPUTS = 2048
MAX_MODERATION_INPUTS = 2048
MODERATION_MODEL = "jielong-lexicon"
# OpenAI's names for the categories that have one (hate, violence, sexual are the same), so
# a client that reads `result.categories.self_harm` (the "self-harm" key) gets ours.
OPENAI_NAMES = {"self_harm": "self-harm", "minors": "sexual/minors", "illegal": "illicit"}

router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def chat_logprobs(s: Served, lps: list[TokenLogprob]) -> list[dict]:
    """Chat completions' logprobs.content."""
    out = []
    for lp in lps:
        text, raw = s.token_text(lp.token)
        top = []
        for t, v in lp.top:
            txt, b = s.token_text(t)
            top.append({"token": txt, "logprob": v, "bytes": b})
        out.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
    return out


def text_logprobs(s: Served, lps: list[TokenLogprob], offset: int) -> dict:
    """Text completions' logprobs, the text offsets counted from `offset`."""
    tokens, values, tops, offsets = [], [], [], []
    for lp in lps:
        txt = s.token_text(lp.token)[0]
        tokens.append(txt)
        values.append(lp.logprob)
        tops.append({s.token_text(t)[0]: v for t, v in lp.top})
        offsets.append(offset)
        offset += len(txt)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets}


# ----------------------------------------------------------------------------- safety


def plain_stream(chunks) -> object:
    """OpenAI's stream of `chunks` with no engine work behind it, ending in [DONE]."""
    async def body():
        async for c in chunks:
            yield sse(c)
        yield "data: [DONE]\n\n"
    return event_stream(body())


def store_of(request: Request):
    """The server's store (the web chat's), where rail decisions are kept; None without."""
    return getattr(request.app.state, "store", None)


def output_rail(request: Request, s: Served, about: str, n: int) -> OutputRail | None:
    if not s.rails.enabled:
        return None
    return OutputRail(s.rails, s.metrics, about, n, v1_recorder(store_of(request)),
                      load=s.engine.decoding)


def output_decisions(batch: Batch, i: int | None = None) -> list[dict]:
    """The output rail's decisions (of choice `i`, or all) as the response reports them."""
    if batch.rail is None:
        return []
    streams = batch.rail.streams if i is None else [batch.rail.streams[i]]
    return [d.to_dict() for st in streams for d in st.decisions]


def blocked_chat(body: ChatRequest, verdict, rid: str, now: int, name: str, prompt: int):
    """The answer to a chat request the input rail blocked: the policy's reply for every
    choice, finish_reason content_filter, nothing generated."""
    return canned_chat(body, verdict.blocked.reply or "", "content_filter", rid, now, name,
                       prompt, {"safety": [d.to_dict() for d in verdict.decisions]})


def canned_chat(body: ChatRequest, reply: str, finish: str, rid: str, now: int, name: str,
                prompt: int, extra: dict, message: dict | None = None):
    """A chat answer nothing was generated for: `reply` for every choice, with `finish`;
    `extra` beside `choices` (and on each choice's last chunk), `message` in each message."""
    if not body.stream:
        return {"id": rid, "object": "chat.completion", "created": now, "model": name,
                "system_fingerprint": None,
                "choices": [{"index": i, "message": {"role": "assistant", "content": reply,
                                                     **(message or {})},
                             "logprobs": None, "finish_reason": finish}
                            for i in range(body.n)],
                "usage": usage(prompt, 0), **extra}
    with_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict], **more) -> dict:
        return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                "system_fingerprint": None, "choices": choices,
                **({"usage": None} if with_usage else {}), **more}

    async def chunks():
        for i in range(body.n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None}])
            yield chunk([{"index": i, "delta": {"content": reply}, "logprobs": None,
                          "finish_reason": None}])
            yield chunk([{"index": i, "delta": {}, "logprobs": None,
                          "finish_reason": finish}], **extra)
        if with_usage:
            yield {**chunk([]), "usage": usage(prompt, 0)}

    return plain_stream(chunks())


def blocked_completion(body: CompletionRequest, verdict, rid: str, now: int, name: str,
                       choices: int, prompt: int):
    """A text completion the input rail blocked, answered as blocked_chat answers a chat."""
    reply, safety = verdict.blocked.reply or "", [d.to_dict() for d in verdict.decisions]
    rows = [{"index": i, "text": reply, "logprobs": None, "finish_reason": "content_filter"}
            for i in range(choices)]
    if not body.stream:
        return {"id": rid, "object": "text_completion", "created": now, "model": name,
                "system_fingerprint": None, "choices": rows, "usage": usage(prompt, 0),
                "safety": safety}

    async def chunks():
        for row in rows:
            yield {"id": rid, "object": "text_completion", "created": now, "model": name,
                   "system_fingerprint": None, "choices": [row], "safety": safety}
        if body.stream_options and body.stream_options.include_usage:
            yield {"id": rid, "object": "text_completion", "created": now, "model": name,
                   "choices": [], "usage": usage(prompt, 0)}

    return plain_stream(chunks())


# ----------------------------------------------------------------------------- models


def model_card(s: Served, name: str, parent: str | None) -> dict:
    """A model's card; max_model_len (the context, as vLLM's cards give it) lets another
    jielong serving this one as its upstream learn it."""
    return {"id": name, "object": "model", "created": s.created, "owned_by": "jielong",
            "root": s.model_name, "parent": parent, "max_model_len": s.engine.context}


@router.get("/models")
async def models(request: Request):
    s = served(request)
    return {"object": "list", "data": [model_card(s, s.model_name, None)] +
            [model_card(s, a, s.model_name) for a in s.engine.adapters]}


@router.get("/models/{model_id:path}")
async def one_model(model_id: str, request: Request):
    s = served(request)
    adapter = s.adapter_for(model_id)
    return model_card(s, model_id, None if adapter is None else s.model_name)


# ----------------------------------------------------------------------------- chat completions


def chat_messages(s: Served, body: ChatRequest) -> list[dict]:
    """The request's messages as the chat template takes them (text parts joined, developer
    as system, the server's system prompt first when the request brings none)."""
    if len(body.messages) > s.max_messages:
        raise ApiError(400, f"messages: {len(body.messages)} messages, more than this "
                            f"server's limit of {s.max_messages}", param="messages")
    messages, calls = [], []
    for i, m in enumerate(body.messages):
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.type != "text" or part.text is None:
                    raise ApiError(400, f"messages[{i}].content[{j}]: only text parts "
                                        f"({{\"type\": \"text\", \"text\": …}}) are supported, "
                                        f"not {part.type!r}",
                                   param=f"messages[{i}].content[{j}].type")
            text = "\n".join(p.text for p in m.content)
        elif m.content is None:
            if m.role != "assistant":
                raise ApiError(400, f"messages[{i}].content: a {m.role} message needs content",
                               param=f"messages[{i}].content")
            text = ""
        else:
            text = m.content
        if len(text) > s.max_message_chars:
            raise ApiError(400, f"messages[{i}].content: {len(text)} characters, more than "
                                f"this server's limit of {s.max_message_chars}",
                           param=f"messages[{i}].content")
        message = {"role": "system" if m.role == "developer" else m.role, "content": text}
        if m.tool_calls:
            message["tool_calls"] = history_calls(m, i, calls)
        if m.role == "tool":
            message.update(answered_call(m, i, calls))
        messages.append(message)
    if s.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": s.system_prompt})
    return messages


def response_grammar(s: Served, rf: dict | None) -> constrain.Grammar | None:
    """The grammar that holds the reply to `response_format` (jielong.infer.constrain): None
    for text; a 400 naming response_format for a bad schema or an unknown type."""
    if rf is None or rf.get("type", "text") == "text":
        return None
    if s.upstream:
        raise ApiError(400, "response_format json_object / json_schema is not passed through to "
                            "the upstream engine", param="response_format")
    try:
        return constrain.response_format(rf)
    except UserError as e:
        raise ApiError(400, str(e), param="response_format") from None


def history_calls(m, i: int, calls: list[str]) -> list[dict]:
    """An assistant message's tool calls, checked: ids used once, arguments a JSON object.
    Their ids join `calls`, the ids a later tool message may answer."""
    if m.role != "assistant":
        raise ApiError(400, f"messages[{i}].tool_calls: only an assistant message makes tool "
                            f"calls, not a {m.role} message", param=f"messages[{i}].tool_calls")
    out = []
    for j, c in enumerate(m.tool_calls):
        where = f"messages[{i}].tool_calls[{j}]"
        try:
            args = json.loads(c.function.arguments)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"{where}.function.arguments: not JSON ({e.msg} at character "
                                f"{e.pos}); send the arguments as a JSON object's text",
                           param=f"{where}.function.arguments") from None
        if not isinstance(args, dict):
            raise ApiError(400, f"{where}.function.arguments: must be a JSON object's text, "
                                f"not {c.function.arguments[:40]!r}",
                           param=f"{where}.function.arguments")
        if c.id in calls:
            raise ApiError(400, f"{where}.id: {c.id!r} is used by an earlier call; give each "
                                "call its own id", param=f"{where}.id")
        calls.append(c.id)
        out.append(c.model_dump())
    return out


def answered_call(m, i: int, calls: list[str]) -> dict:
    """A tool message's fields, once its tool_call_id is known to answer an earlier call."""
    where = f"messages[{i}].tool_call_id"
    if not m.tool_call_id:
        raise ApiError(400, f"{where}: a tool message needs tool_call_id, the id of the "
                            "assistant's call it answers", param=where)
    if m.tool_call_id not in calls:
        raise ApiError(400, f"{where}: {m.tool_call_id!r} answers no tool call made earlier "
                            f"in the conversation (calls so far: {calls[-5:]})", param=where)
    return {"tool_call_id": m.tool_call_id, **({"name": m.name} if m.name else {})}


def request_tools(s: Served, body: ChatRequest) -> tuple[list[dict] | None, str | None]:
    """The request's tools, checked, and its tool_choice: "none", "auto", "required" or a
    function's name (None without tools)."""
    if body.functions:
        raise ApiError(400, "functions (OpenAI's deprecated form) is not supported; send the "
                            "same definitions as tools=[{\"type\": \"function\", \"function\": "
                            "{…}}]", param="functions")
    tools = body.tools or None
    if tools and s.upstream:
        raise ApiError(400, "tools are not supported with an upstream engine yet; send them to "
                            "the upstream directly", param="tools")
    try:
        tools = check_tools(tools) if tools else None
    except ValueError as e:
        raise ApiError(400, str(e), param="tools") from None
    try:
        return tools, check_tool_choice(body.tool_choice, tools)
    except ValueError as e:
        raise ApiError(400, str(e), param="tool_choice") from None


def tool_reply(got, finish: str) -> tuple[dict, str]:
    """A reply's message fields from its parse, and its finish_reason: "tool_calls" when it
    ended by calling, every call well formed."""
    message: dict = {"content": got.content}
    if got.calls:
        message["tool_calls"] = got.calls
        if not got.content.strip():
            message["content"] = None
    if got.errors:
        message["tool_call_errors"] = got.errors
    if got.calls and not got.errors and finish == "stop":
        finish = "tool_calls"
    return message, finish


@router.post("/chat/completions")
async def chat_completions(request: Request):
    s = served(request)
    body: ChatRequest = await read_body(request, ChatRequest)
    adapter = s.adapter_for(body.model)
    tools, choice = request_tools(s, body)
    grammar = response_grammar(s, body.response_format)
    messages = chat_messages(s, body)
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    about = messages[users[-1]]["content"] if users else ""
    verdict = await check_input(s.rails, s.metrics, about)
    await record(store_of(request), verdict.decisions, verdict.text, "v1")
    if users:
        messages[users[-1]]["content"] = verdict.text
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    collection, hits = None, []
    if users and not verdict.blocked:  # the rail first, then retrieval
        opt = body.rag if isinstance(body.rag, RagOptions) else None
        collection, hits = await ground(request, opt.collection if opt else body.rag,
                                        verdict.text, opt.k if opt else None, "rag")
    if hits:
        last = users[-1]
        reserve = max_tokens if max_tokens is not None else reply_budget(s.engine.context)
        hits, grounded = fit(lambda m: s.measure(m, "messages"), verdict.text, hits,
                             messages[:last], s.engine.context - reserve, "messages")
        messages = grounded + messages[last + 1:]
    style = tool_style(s.tok)
    offered = tools if choice not in (None, "none") else None  # "none": not shown, not read
    parallel = body.parallel_tool_calls is not False
    begun = ""
    if offered and choice != "auto":  # required or named: the reply can only be such calls
        if grammar is not None:
            raise ApiError(400, f"tool_choice {choice!r} and response_format both constrain the "
                                "reply; send one of them", param="response_format")
        if style == "mistral":  # its [TOOL_CALLS] is a special token, not grammar text
            begun = prefill(style, choice)
        else:
            want = choice if choice == "required" else {"type": "function",
                                                         "function": {"name": choice}}
            try:
                grammar = constrain.tool_call_grammar(offered, style, want, parallel)
            except UserError as e:
                raise ApiError(400, str(e), param="tools") from None
    if s.upstream:
        prompt = s.chat_prompt(messages, "messages")
    else:
        prompt = s.chat_prompt(template_messages(messages, style), "messages", offered, begun)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    k = (body.top_logprobs or 0) if body.logprobs else None
    if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"top_logprobs={k} must be in [0, {MAX_TOP_LOGPROBS}]",
                       param="top_logprobs")
    params = s.sampling(body, max_tokens, k)
    params.grammar = grammar
    max_name = "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens"
    s.fit(prompt, params, "conversation", "messages", adapter, max_name,
          {"logprobs": "top_logprobs", "max_tokens": max_name})
    rid, now, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model or s.model_name
    if verdict.blocked:
        s.metrics.ended(name, "content_filter", body.n)
        return blocked_chat(body, verdict, rid, now, name, s.count(prompt))
    safety = [d.to_dict() for d in verdict.decisions]
    lib = library_of(request)
    sources = lib.sources(collection, hits) if collection else []

    def documents(text: str) -> dict:
        """What a choice's message carries of the documents: nothing without retrieval."""
        if collection is None:
            return {}
        return {"citations": lib.cite(collection, text, hits), "sources": sources}

    if collection is not None and not hits:  # nothing relevant: "I don't know", no model
        s.metrics.ended(name, "stop", body.n)
        return canned_chat(body, decline_text(verdict.text), "stop", rid, now, name,
                           s.count(prompt), {"safety": safety, **documents("")}, documents(""))
    jobs = s.jobs([prompt], params, adapter, body.n)
    batch = Batch(s.engine, jobs, s.metrics, output_rail(request, s, about, len(jobs)),
                  ticket=admit(request, jobs))

    def reply(o: dict) -> tuple[dict, str]:
        if not offered:
            return {"content": o["text"]}, o["finish"]
        return tool_reply(parse(begun + o["text"], style, parallel), o["finish"])

    if not body.stream:
        out = await collect(request, batch)
        replies = [reply(o) for o in out]
        return {"id": rid, "object": "chat.completion", "created": now, "model": name,
                "system_fingerprint": None,
                "choices": [{"index": i,
                             "message": {"role": "assistant", **replies[i][0],
                                         **documents(o["text"])},
                             "logprobs": {"content": chat_logprobs(s, o["logprobs"])}
                             if k is not None else None,
                             "finish_reason": replies[i][1]} for i, o in enumerate(out)],
                "usage": usage(batch.usage(body.n)[0], sum(o["tokens"] for o in out)),
                "safety": safety + output_decisions(batch),
                **(documents(out[0]["text"]) if out else {})}

    with_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict]) -> dict:
        c = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
             "system_fingerprint": None, "choices": choices}
        if with_usage:
            c["usage"] = None
        return c

    async def chunks():
        texts = [""] * len(batch.reqs)
        parsers = [StreamParser(style, parallel) if offered else None for _ in batch.reqs]
        called: list[set[int]] = [set() for _ in batch.reqs]
        for i in range(len(batch.reqs)):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None}])
            for d in parsers[i].feed(begun) if begun else []:
                called[i].update(c["index"] for c in d.get("tool_calls", []))
                yield chunk([{"index": i, "delta": d, "logprobs": None, "finish_reason": None}])
        async for i, e in batch.events():
            if e.finish_reason == "error":
                raise failed(e)
            texts[i] += e.text
            lps = chat_logprobs(s, e.logprobs) if k is not None and e.logprobs else None
            p, finish = parsers[i], e.finish_reason
            deltas = [{"content": e.text}] if p is None and e.text else []
            if p is not None:
                deltas = p.feed(e.text) + (p.finish() if finish else [])
            if lps and not deltas:
                deltas = [{}]
            for j, d in enumerate(deltas):
                called[i].update(c["index"] for c in d.get("tool_calls", []))
                yield chunk([{"index": i, "delta": d,
                              "logprobs": {"content": lps} if lps and j == 0 else None,
                              "finish_reason": None}])
            if finish:
                last: dict = {}
                if p is not None:
                    broken = {x["index"] for x in p.errors}
                    if called[i] - broken and not p.errors and finish == "stop":
                        finish = "tool_calls"
                    if p.errors:
                        last["tool_call_errors"] = p.errors
                c = chunk([{"index": i, "delta": last, "logprobs": None,
                            "finish_reason": finish}])
                if finish == "content_filter":
                    c["safety"] = output_decisions(batch, i)
                c.update(documents(texts[i]))
                yield c
        if with_usage:
            c = chunk([])
            c["usage"] = usage(*batch.usage(body.n))
            yield c

    await batch.ready()
    return openai_stream(request, batch, chunks())


# ----------------------------------------------------------------------------- text completions


@router.post("/completions")
async def completions(request: Request):
    s = served(request)
    body: CompletionRequest = await read_body(request, CompletionRequest)
    adapter = s.adapter_for(body.model)
    if body.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported by this server",
                       param="suffix")
    p, tok = body.prompt, s.tok
    if isinstance(p, str):
        texts, prompts = [p], [s.text_prompt(p)]
    elif p and isinstance(p[0], str):
        texts, prompts = list(p), [s.text_prompt(x) for x in p]
    elif p and isinstance(p[0], list):
        prompts = [s.check_ids(ids, "prompt") for ids in p]
        texts = [tok.decode(ids) for ids in prompts]
    else:  # one list of token ids (or an empty list)
        prompts = [s.check_ids(list(p), "prompt")]
        texts = [tok.decode(prompts[0])]
    if not prompts:
        raise ApiError(400, "prompt: give at least one prompt", param="prompt")
    if body.echo and body.logprobs is not None:
        raise ApiError(400, "echo with logprobs (the prompt's log-probabilities) is not "
                            "supported; drop one of them", param="echo")
    params = s.sampling(body, body.max_tokens if body.max_tokens is not None else 16,
                        body.logprobs)
    for prompt in prompts:
        s.fit(prompt, params, "prompt", "prompt", adapter)
    n = body.n
    rid, now, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model or s.model_name
    verdicts = [await check_input(s.rails, s.metrics, t) for t in texts]
    for v in verdicts:
        await record(store_of(request), v.decisions, v.text, "v1")
    blocked = next((v for v in verdicts if v.blocked), None)
    if blocked:  # a text prompt is one document: a blocked one answers the whole request
        s.metrics.ended(name, "content_filter", len(prompts) * n)
        return blocked_completion(body, blocked, rid, now, name, len(prompts) * n,
                                  sum(s.count(q) for q in prompts))
    jobs = s.jobs(prompts, params, adapter, n)
    batch = Batch(s.engine, jobs, s.metrics, output_rail(request, s, texts[0], len(jobs)),
                  ticket=admit(request, jobs))
    prefix = [texts[i // n] if body.echo else "" for i in range(len(batch.reqs))]

    if not body.stream:
        out = await collect(request, batch)
        return {"id": rid, "object": "text_completion", "created": now, "model": name,
                "system_fingerprint": None,
                "choices": [{"index": i, "text": prefix[i] + o["text"],
                             "logprobs": text_logprobs(s, o["logprobs"], len(prefix[i]))
                             if body.logprobs is not None else None,
                             "finish_reason": o["finish"]} for i, o in enumerate(out)],
                "usage": usage(batch.usage(n)[0], sum(o["tokens"] for o in out)),
                "safety": [d.to_dict() for v in verdicts for d in v.decisions] +
                output_decisions(batch)}

    with_usage = bool(body.stream_options and body.stream_options.include_usage)
    offsets = [len(x) for x in prefix]

    def chunk(i: int, text: str, lps, finish: str | None) -> dict:
        c = {"id": rid, "object": "text_completion", "created": now, "model": name,
             "system_fingerprint": None,
             "choices": [{"index": i, "text": text, "logprobs": lps, "finish_reason": finish}]}
        if with_usage:
            c["usage"] = None
        return c

    async def chunks():
        for i, x in enumerate(prefix):
            if x:
                yield chunk(i, x, None, None)
        async for i, e in batch.events():
            if e.finish_reason == "error":
                raise failed(e)
            lps = None
            if body.logprobs is not None and e.logprobs:
                lps = text_logprobs(s, e.logprobs, offsets[i])
            offsets[i] += len(e.text)
            if e.text or lps:
                yield chunk(i, e.text, lps, None)
            if e.finish_reason:
                yield chunk(i, "", None, e.finish_reason)
        if with_usage:
            yield {"id": rid, "object": "text_completion", "created": now, "model": name,
                   "choices": [], "usage": usage(*batch.usage(n))}

    await batch.ready()
    return openai_stream(request, batch, chunks())


# ----------------------------------------------------------------------------- embeddings


@router.post("/embeddings")
async def embeddings(request: Request):
    s = served(request)
    body: EmbeddingRequest = await read_body(request, EmbeddingRequest)
    adapter = s.adapter_for(body.model)
    if s.upstream:  # the upstream's own embeddings, asked of its model
        sent = body.model_dump(exclude_none=True)
        out = await s.engine.embeddings({**sent, "model": adapter or s.engine.model})
        return {**out, "model": body.model or s.model_name}
    x, tok, engine = body.input, s.tok, s.engine
    if isinstance(x, str):
        inputs = [tok.encode(x)]
    elif x and isinstance(x[0], str):
        inputs = [tok.encode(t) for t in x]
    elif x and isinstance(x[0], list):
        inputs = [s.check_ids(ids, "input") for ids in x]
    else:
        inputs = [s.check_ids(list(x), "input")]
    if not inputs:
        raise ApiError(400, "input: give at least one text", param="input")
    if len(inputs) > MAX_EMBED_INPUTS:
        raise ApiError(400, f"input: {len(inputs)} inputs, more than {MAX_EMBED_INPUTS} in "
                            "one request", param="input")
    hidden = engine.model.config.hidden_size
    if body.dimensions is not None and body.dimensions != hidden:
        raise ApiError(400, f"dimensions={body.dimensions}: this model's embeddings have "
                            f"{hidden} dimensions; leave it out", param="dimensions")
    for i, ids in enumerate(inputs):
        if not ids:
            raise ApiError(400, f"input[{i}] is empty; give at least one token", param="input")
        if len(ids) >= engine.context:
            raise ApiError(400, f"input[{i}] is {len(ids)} tokens, more than this model's "
                                f"context of {engine.context} tokens; shorten it",
                           param="input", code="context_length_exceeded")
    try:
        future = engine.embed(inputs, adapter)
    except UserError as e:
        raise ApiError(400, str(e), param="input") from None
    vectors = await asyncio.wrap_future(future)

    def encode(v: list[float]):
        if body.encoding_format == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
        return v

    n = sum(len(ids) for ids in inputs)
    return {"object": "list", "model": body.model or s.model_name,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n, "total_tokens": n}}


# ----------------------------------------------------------------------------- moderations


@router.post("/moderations")
async def moderations(request: Request):
    body: ModerationRequest = await read_body(request, ModerationRequest)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise ApiError(400, "input: give at least one text", param="input")
    if len(texts) > MAX_MODERATION_INPUTS:
        raise ApiError(400, f"input: {len(texts)} inputs, more than {MAX_MODERATION_INPUTS} in "
                            "one request", param="input")
    rails = served(request).rails  # the server's policy and detectors; the default when off
    policy, dets = (rails.policy, rails.detectors + rails.model_detectors) if rails.enabled \
        else (None, None)
    results = await asyncio.to_thread(lambda: [moderate(t, policy, dets) for t in texts])
    for r in results:
        for key in ("categories", "category_scores"):
            r[key].update({OPENAI_NAMES[c]: v for c, v in list(r[key].items()) if c in OPENAI_NAMES})
    return {"id": f"modr-{uuid.uuid4().hex}", "model": body.model or MODERATION_MODEL,
            "results": results}
