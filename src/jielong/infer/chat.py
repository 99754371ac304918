"""`jielong chat`: talk to a model in the terminal, replies streamed as they are made.

Run as:
    jielong chat --help

For example:
    jielong chat --model Qwen/Qwen2.5-0.5B-Instruct --system "Answer briefly."
    > /temperature 0.3
    > 台北有什麼好玩的？

The conversation is rendered with the model's own chat template every turn. A reply is at
most a quarter of the context by default (jielong.infer.context.reply_budget), and when the
conversation outgrows the context its oldest turns are left out (the system prompt stays),
with a one-line notice. The KV cache
is kept between turns: only the tokens after the longest prefix shared with what the model
already read are fed to it, so a long conversation does not slow each reply down.

LoRA adapters share the one base model: `--adapter chat=runs/chat/adapter poem=runs/poem/adapter`
loads both, and `/adapter poem` switches mid-conversation (`/adapter off`: the base alone).
The cache was computed with the old adapter's weights, so the next reply reads the whole
conversation again.
Commands: /reset, /system TEXT, /temperature X, /adapter NAME, /help, /quit (or Ctrl-D).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from jielong.checkpoint import check_model_dir
from jielong.errors import UserError
from jielong.hub import choose_adapter, open_model, stop_ids
from jielong.infer.compiled import CompiledDecoder, cache_length, compiled_or_none, worth_compiling
from jielong.infer.context import fit_conversation, reply_budget
from jielong.infer.sampling import SamplingParams, sample
from jielong.lora import active_adapter, adapter_names
from jielong.model import KVCache, Transformer
from jielong.runtime import decoding_memory, pick_device

HELP = """commands:
  /reset          forget the conversation (keeps the system prompt)
  /system TEXT    set the system prompt (and start over); /system alone removes it
  /temperature X  sampling temperature, 0 = greedy
  /adapter NAME   reply with another loaded LoRA adapter (off: the base model);
                  /adapter alone lists them
  /help           this list
  /quit           leave (or Ctrl-D)"""


class Session:
    """One conversation's KV cache and the tokens it holds (read with the adapter that was
    active then: when another is, the next reply reads everything again)."""

    def __init__(self, model: Transformer, context: int, compile: bool = False):
        p = next(model.parameters())
        self.model, self.context = model, context
        # eager: a KV cache of the whole context; compiled (jielong.infer.compiled): a static
        # one as long as the conversation needs, rounded up, grown (copied) when it outgrows it
        self.cache = None if compile else KVCache(model.config, 1, context, device=p.device, dtype=p.dtype)
        self.decoder: CompiledDecoder | None = None
        self.fed: list[int] = []  # the tokens whose keys and values the cache holds
        self.adapter = active_adapter(model)  # the LoRA adapter they were computed with
        self.reused = 0  # how many of them the last reply did not have to read again

    def grow(self, tokens: int, keep: int) -> bool:
        """A compiled decoder whose cache holds `tokens`, the first `keep` slots copied over;
        False when compiling is unavailable here (said once): an empty eager cache instead."""
        old = self.decoder
        if old is not None and old.max_len >= tokens:
            return True
        self.decoder = compiled_or_none(self.model, 1, cache_length(self.model.config, tokens))
        if self.decoder is None:
            p = next(self.model.parameters())
            self.cache = KVCache(self.model.config, 1, self.context, device=p.device, dtype=p.dtype)
            return False
        if old is not None and keep:
            with torch.inference_mode():  # the static cache is written in inference mode
                for a, b in zip(old.k + old.v, self.decoder.k + self.decoder.v, strict=True):
                    b[:, :, :keep] = a[:, :, :keep]
        return True

    @torch.no_grad()
    def reply(self, prompt: list[int], s: SamplingParams, stop_ids: set[int]) -> Iterator[int]:
        """Yield new token ids for `prompt` (the whole conversation) until a stop token."""
        room = self.context - len(prompt)
        if room < 1:
            raise UserError(f"the conversation is {len(prompt)} tokens, more than the "
                            f"{self.context}-token context; /reset to start over")
        if active_adapter(self.model) != self.adapter:  # other weights made the cached keys
            self.fed, self.adapter = [], active_adapter(self.model)
        keep = 0
        while keep < min(len(prompt) - 1, len(self.fed)) and prompt[keep] == self.fed[keep]:
            keep += 1
        self.reused = keep
        device = next(self.model.parameters()).device
        n = min(s.max_tokens or room, room)
        if self.cache is None and not self.grow(len(prompt) + n, keep):
            keep = self.reused = 0  # the eager cache starts empty
        ids = torch.tensor([prompt[keep:]], device=device)
        if self.cache is None:
            at = torch.arange(keep, len(prompt), device=device)[None]
            logits = self.decoder.prefill(ids, at, at)
        else:
            self.cache.pos = keep
            logits = self.model(ids, cache=self.cache, last_only=True)[:, -1]
        self.fed = list(prompt)
        gen = torch.Generator(device=device).manual_seed(s.seed) if s.seed is not None else None
        seen = counts = None
        vocab = self.model.config.vocab_size
        if s.repetition_penalty != 1.0:
            seen = torch.zeros((1, vocab), dtype=torch.bool, device=device)
            seen[0, prompt] = True
        if s.presence_penalty or s.frequency_penalty:
            counts = torch.zeros((1, vocab), dtype=torch.int32, device=device)
        for i in range(n):
            tok = sample(logits, s, counts, seen, gen)
            t = int(tok)
            if t in stop_ids:
                return
            yield t
            if i == n - 1:
                return
            if seen is not None:
                seen[0, t] = True
            if counts is not None:
                counts[0, t] += 1
            if self.cache is None:
                at = torch.tensor([[len(self.fed)]], device=device)
                logits = self.decoder.decode(tok[:, None], at, at)
            else:
                logits = self.model(tok[:, None], cache=self.cache)[:, -1]
            self.fed.append(t)


def fit_chat(tok, system: str | None, messages: list[dict], context: int,
             reserve: int) -> tuple[list[dict], list[int], int]:
    """(messages kept, prompt ids, how many were left out): the conversation (the system
    prompt, then `messages`) less its oldest turns until `reserve` tokens are left for the
    reply (jielong.infer.context.fit_conversation)."""
    head = [{"role": "system", "content": system}] if system else []

    def encode(convo: list[dict]) -> list[int]:
        return tok.encode_chat(convo, add_generation_prompt=True)[0]

    kept, prompt, dropped = fit_conversation(head + messages, encode, context, reserve)
    return kept[len(head):], prompt, dropped


def need_demo(model: str) -> None:
    """Fail at once, before any slow start-up, when the default model (one `jielong demo`
    makes) is not there yet."""
    if Path(model).parts[:2] == ("runs", "demo"):
        check_model_dir(model)


def stream_text(tok, ids: Iterator[int], write: Callable[[str], None]) -> str:
    """Decode `ids` as they come and write the new text; a character split across tokens
    is written once it is whole."""
    out: list[int] = []
    shown = ""
    for i in ids:
        out.append(i)
        text = tok.decode(out, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            write(text[len(shown):])
            shown = text
    text = tok.decode(out, skip_special_tokens=True)
    if len(text) > len(shown):
        write(text[len(shown):])
    return text


def chat(
    model: str = "runs/demo/model",
    system: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    max_tokens: int | None = None,
    context: int = 4096,
    seed: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    adapter: list[str] | None = None,
    adapter_name: str | None = None,
    quantize: str | None = None,
    compile: bool | None = None,
) -> None:
    """Chat with a model in the terminal, using its own chat template; replies stream.

    Commands while chatting: /reset, /system TEXT, /temperature X, /adapter NAME (switch
    LoRA adapter; off: the base model), /help, /quit.

    Args:
        model: A model directory or a Hugging Face hub id.
        system: System prompt for the conversation.
        temperature: Sampling temperature, 0 = greedy (default: the model's generation_config).
        top_p: Nucleus sampling mass (default: the model's generation_config, else 1).
        top_k: Sample among the k likeliest tokens (default: the model's, else all).
        max_tokens: Most tokens in one reply (default: a quarter of the context, at most
            1024, so that the conversation keeps room in the context).
        context: Most tokens the conversation may hold (KV cache size).
        seed: Random seed for reproducible replies.
        device: auto, cpu, cuda, mps.
        dtype: auto (the checkpoint's on a GPU, float32 on CPU), float32, bfloat16, float16.
        adapter: LoRA adapter folders (PEFT layout) to load on the model (--adapter A B or
            --adapter A --adapter B), each DIR or NAME=DIR (name: the folder's, or its parent's for
            runs/NAME/adapter).
        adapter_name: Which loaded adapter replies first (default: the first; off: the base).
        quantize: int8 or int4: weight-only quantized linear layers (faster on a CPU, 4-8x
            smaller); default: the weights as stored.
        compile: Decode with the compiled step (torch.compile; compiled once, cached on disk);
            default off for now (compiling takes longer than a reply saves on a 2-core CPU;
            jielong.infer.compiled).
    """
    need_demo(model)
    with decoding_memory():
        net, tok, gen = open_model(model, device=pick_device(device), dtype=dtype, adapters=adapter,
                                   adapter_name=adapter_name, quantize=quantize,
                                   pack=False if compile else 1)
    if not tok.config.get("chat_template"):
        raise UserError(f"{model}: the tokenizer has no chat template, so it cannot chat; use "
                        "`jielong generate` to continue text")
    context = min(context, net.config.max_position_embeddings)
    if max_tokens is None:
        max_tokens = reply_budget(context)
    elif not 0 < max_tokens < context:
        raise UserError(f"--max_tokens {max_tokens}: must be between 1 and {context - 1} (the "
                        f"context is {context} tokens, and the conversation needs room too); "
                        f"leave it out for {reply_budget(context)}")
    s = SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature if temperature is not None else
        (gen.get("temperature", 0.7) if gen.get("do_sample", True) else 0.0),
        top_p=top_p if top_p is not None else gen.get("top_p", 1.0),
        top_k=top_k if top_k is not None else gen.get("top_k", 0) or 0,
        repetition_penalty=gen.get("repetition_penalty", 1.0), seed=seed)
    s.validate()
    stops = stop_ids(tok, gen, net.config.eos_token_id)
    session = Session(net, context, worth_compiling(net, 1) if compile is None else compile)
    messages: list[dict] = []
    interactive = sys.stdin.isatty()
    dim = (lambda t: f"\033[2m{t}\033[0m") if interactive else (lambda t: t)
    with_adapter = f" + adapter {active_adapter(net)}" if active_adapter(net) else ""
    print(dim(f"chatting with {model}{with_adapter} · temperature {s.temperature:g} · "
              "/help for commands"))

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            print()
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/quit", "/exit"):
                break
            elif cmd == "/reset":
                messages = []
                print(dim("(conversation cleared)"))
            elif cmd == "/system":
                system, messages = arg.strip() or None, []
                print(dim(f"(system prompt {'set' if system else 'removed'}; conversation cleared)"))
            elif cmd == "/temperature":
                try:
                    value = float(arg)
                    if value < 0:
                        raise ValueError
                except ValueError:
                    print(dim(f"(/temperature needs a number ≥ 0, got {arg!r})"))
                    continue
                s.temperature = value
                print(dim(f"(temperature {value:g})"))
            elif cmd == "/adapter":
                if arg.strip():
                    try:
                        choose_adapter(net, arg.strip())
                    except UserError as e:
                        print(dim(f"({e})"))
                        continue
                now = f"adapter {active_adapter(net)}" if active_adapter(net) else "base model alone"
                print(dim(f"({now}; loaded: {', '.join(adapter_names(net)) or 'none'})"))
            else:
                print(dim(HELP))
            continue
        messages.append({"role": "user", "content": line})
        try:
            messages, prompt, dropped = fit_chat(tok, system, messages, context, s.max_tokens)
            if dropped:
                kept = "; the system prompt stays" if system else ""
                print(dim(f"(the conversation outgrew the {context}-token context: left out its "
                          f"{dropped} oldest messages{kept})"))
            reply = stream_text(tok, session.reply(prompt, s, stops), write)
        except UserError as e:
            messages.pop()
            print(dim(f"({e})"))
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat
            reply = tok.decode(session.fed[len(prompt):], skip_special_tokens=True)
        print()
        messages.append({"role": "assistant", "content": reply})
