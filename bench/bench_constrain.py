"""Constrained decoding (issue 20, item 2): which grammar library, and what a JSON schema
costs per token in the engine.

Run as:  .venv/bin/python bench/bench_constrain.py [--tokenizers DIR] [--libs llguidance xgrammar outlines-core]

1. Libraries: llguidance, xgrammar and outlines-core (whichever are installed) on byte-level
   BPE vocabularies trained by jielong on ../shared/data (1,024, 4,096 and 32,768 tokens;
   built once into --tokenizers, ~2 min): setting up the tokenizer, compiling a grammar
   (schema → grammar → matcher → first mask, so a library that compiles lazily pays here
   too), and the mean time of a token mask while a valid document is fed token by token (each
   token checked to be allowed), for three grammars: a flat "person" schema, a harder one
   (pattern, bounded strings and arrays, anyOf, nested objects) and any JSON object
   (response_format json_object).
2. The engine (llguidance through jielong.infer.constrain): a random demo-preset model (4
   layers, width 128) with each vocabulary, 16 requests on 8 slots sampling at temperature 1
   with a bounded JSON schema, then the same requests with no grammar and ignore_eos for the
   same number of tokens each; tok/s both ways, overhead per token, and the share of the
   constrained replies that parse and validate. Each way runs three times, alternating, and
   the fastest counts (the machine is shared with other jobs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from common import machine

from jielong.config import preset
from jielong.infer import constrain
from jielong.infer.engine import Engine
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.tokenizer import Tokenizer, train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from constrained import valid  # noqa: E402  (the tests' hand-written schema check)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZES = (1024, 4096, 32768)
PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "city": {"type": "string", "enum": ["台北", "上海", "London"]},
    "tags": {"type": "array", "items": {"type": "string"}},
    "address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["street", "zip"], "additionalProperties": False},
    "student": {"type": "boolean"}},
    "required": ["name", "age", "city", "tags", "address", "student"], "additionalProperties": False}
HARD = {"type": "object", "properties": {
    "id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
    "title": {"type": "string", "minLength": 1, "maxLength": 40},
    "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
               "minItems": 1, "maxItems": 8},
    "owner": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {
        "name": {"type": "string"}, "email": {"type": "string", "format": "email"}},
        "required": ["name"], "additionalProperties": False}]},
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "sku": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"}},
        "required": ["sku", "qty", "price"], "additionalProperties": False}}},
    "required": ["id", "title", "scores", "owner", "items"], "additionalProperties": False}
GRAMMARS = {
    "person": (PERSON, {"name": "王小明 Wang", "age": 21, "city": "台北", "tags": ["學生", "reader", "读书"],
                        "address": {"street": "中山路 1 號", "zip": "100"}, "student": True}),
    "hard": (HARD, {"id": "TW1234", "title": "接龍 測試 test", "scores": [90, 85, 100],
                    "owner": {"name": "陳大文", "email": "a@b.tw"},
                    "items": [{"sku": "A-1", "qty": 2, "price": 3.5}, {"sku": "书", "qty": 10, "price": 0.25}]}),
    "any object": ({"type": "object"}, {"a": [1, {"b": {"c": ["深", None, True, 2500.0]}}], "中文": "值"}),
}
BOUNDED = {"type": "object", "properties": {  # the engine's: every string bounded, so replies end
    "city": {"enum": ["台北", "上海", "London"]}, "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
    "ok": {"type": "boolean"}},
    "required": ["city", "name", "age", "tags", "ok"], "additionalProperties": False}
PROMPTS = ["Give me a person as JSON.", "請用 JSON 介紹一個人。", "请用 JSON 介绍一个人。", "JSON please:"]


def corpus():
    for name in ("tang-poems-zh-hant.jsonl", "song-ci-zh-hans.jsonl", "classics-zh.jsonl"):
        with open(DATA / name, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]
    text = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    for i in range(0, len(text), 2000):
        yield text[i:i + 2000]
    for name in ("drcd-dev.json", "cmrc2018-dev.json"):
        for article in json.loads((DATA / name).read_text(encoding="utf-8"))["data"]:
            for p in article["paragraphs"]:
                yield p["context"]


def tokenizers(root: Path) -> dict[int, Tokenizer]:
    out = {}
    for v in SIZES:
        d = root / f"tok-{v}"
        if not (d / "tokenizer.json").is_file():
            print(f"training a {v}-token BPE into {d} ...", flush=True)
            train_tokenizer(corpus(), vocab_size=v).save(d)
        out[v] = Tokenizer.from_dir(d)
    return out


class Lib:
    """One library behind the same three steps: setup(tok), compile(schema), then per token
    mask() / allowed(t) / advance(t)."""

    def __init__(self, name: str, tok: Tokenizer):
        self.name, self.tok, self.V = name, tok, tok.vocab_size
        self.stops = sorted(tok.end_ids)
        self.words = torch.full((1, -(-self.V // 32)), -1, dtype=torch.int32)
        importlib.import_module(name.replace("-", "_"))  # import time is not setup time
        t = time.perf_counter()
        if name == "llguidance":
            import llguidance as llg
            self.llg = llg
            self.lltok = llg.LLTokenizer(tok.backend.to_str(), n_vocab=self.V, eos_token=self.stops)
        elif name == "xgrammar":
            import xgrammar as xgr
            self.xgr = xgr
            info = xgr.TokenizerInfo(tok.byte_table, xgr.VocabType.RAW, vocab_size=self.V,
                                     stop_token_ids=self.stops)
            self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        else:
            import outlines_core as oc
            self.oc = oc
            tokens: dict[bytes, list[int]] = {}
            for i, b in enumerate(tok.byte_table):
                if b:
                    tokens.setdefault(b, []).append(i)
            self.vocab = oc.Vocabulary(tok.eos_id, tokens)
        self.setup_s = time.perf_counter() - t

    def compile(self, schema: dict) -> None:
        if self.name == "llguidance":
            g = self.llg.LLMatcher.grammar_from_json_schema(schema, overrides=constrain.JSON_FORMAT)
            self.m = self.llg.LLMatcher(self.lltok, g)
            assert not self.m.is_error(), self.m.get_error()
            self.mask = lambda: self.m.unsafe_compute_mask_ptr(self.words.data_ptr(), self.words.numel() * 4)
            self.advance = lambda t: self.m.consume_token(t)
        elif self.name == "xgrammar":
            cg = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                   separators=(", ", ": "))
            self.m = self.xgr.GrammarMatcher(cg)
            self.mask = lambda: self.m.fill_next_token_bitmask(self.words)
            self.advance = lambda t: self.m.accept_token(t)
        else:
            from outlines_core.json_schema import build_regex_from_schema
            self.m = self.oc.Guide(self.oc.Index(build_regex_from_schema(json.dumps(schema), " ?"), self.vocab))
            self.mask = lambda: self.m.write_mask_into(self.words.data_ptr(), self.words.numel(), 4)
            self.advance = lambda t: self.m.advance(t)
        self.mask()

    def allowed(self, t: int) -> bool:
        return bool((self.words[0, t // 32] >> (t % 32)) & 1)


def compare(libs: list[str], toks: dict[int, Tokenizer]) -> None:
    print("\n| library | vocab | grammar | tokenizer setup | compile (+ first mask) | mask per token | tokens |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in libs:
        for v, tok in toks.items():
            try:
                lib = Lib(name, tok)
            except ImportError as e:
                print(f"| {name} | not installed: {e} |")
                break
            for kind, (schema, doc) in GRAMMARS.items():
                ids = tok.encode(json.dumps(doc, ensure_ascii=False))
                try:
                    t = time.perf_counter()
                    lib.compile(schema)
                    compile_s = time.perf_counter() - t
                    times = []
                    for i, x in enumerate(ids):
                        if i:
                            t = time.perf_counter()
                            lib.mask()
                            times.append(time.perf_counter() - t)
                        if not lib.allowed(x):
                            raise AssertionError(f"token {i} ({tok.decode([x])!r}) refused")
                        lib.advance(x)
                    lib.mask()
                    if not any(lib.allowed(s) for s in lib.stops):
                        raise AssertionError("cannot end after a complete document")
                    mean = sum(times) / len(times)
                    print(f"| {name} | {v} | {kind} | {lib.setup_s * 1e3:.0f} ms | {compile_s * 1e3:.1f} ms "
                          f"| {mean * 1e6:.0f} µs | {len(ids)} |", flush=True)
                except Exception as e:  # a grammar the library cannot do is a row, not a crash
                    print(f"| {name} | {v} | {kind} | {lib.setup_s * 1e3:.0f} ms | fails: "
                          f"{type(e).__name__}: {str(e)[:60]} | | |", flush=True)


def engine_run(tok: Tokenizer, n: int = 16) -> None:
    torch.manual_seed(0)
    model = Transformer(preset("demo", vocab_size=tok.vocab_size)).eval()
    e = Engine(model, tok, tok.end_ids, slots=8).start()
    g = constrain.json_schema(BOUNDED)
    prompts = [tok.encode(PROMPTS[i % len(PROMPTS)]) for i in range(n)]

    def run(params):
        t = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            got = list(pool.map(lambda i: e.complete(prompts[i], params[i]), range(n)))
        return got, time.perf_counter() - t

    # warm up, and build llguidance's view of the vocabulary (once per tokenizer, cached)
    e.complete(prompts[0], SamplingParams(8, grammar=g))
    t_con = t_free = float("inf")
    for _ in range(3):  # alternating, the fastest of three: the machine is shared
        con, t = run([SamplingParams(400, temperature=1.0, seed=i, grammar=g) for i in range(n)])
        t_con = min(t_con, t)
        lengths = [len(c.token_ids) + (c.finish_reason == "stop") for c in con]
        free, t = run([SamplingParams(k, temperature=1.0, seed=i, ignore_eos=True)
                       for i, k in enumerate(lengths)])
        t_free = min(t_free, t)
    e.close()
    ok = 0
    for c in con:
        try:
            ok += c.finish_reason == "stop" and valid(json.loads(c.text), BOUNDED)
        except json.JSONDecodeError:
            pass
    tokens = sum(lengths)
    assert tokens == sum(len(c.token_ids) for c in free)
    print(f"| {tok.vocab_size} | {n} | {tokens} | {tokens / t_free:.0f} | {tokens / t_con:.0f} | "
          f"{(t_con - t_free) / tokens * 1e3:+.2f} ms ({(t_con / t_free - 1) * 100:+.0f}%) | {ok}/{n} |",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizers", default="/tmp/jielong-bench-constrain")
    ap.add_argument("--libs", nargs="+", default=["llguidance", "xgrammar", "outlines-core"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    toks = tokenizers(Path(args.tokenizers))
    compare(args.libs, toks)
    print("\n| vocab | requests | tokens | tok/s, no grammar | tok/s, JSON schema | overhead per token | valid |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for v in SIZES:
        engine_run(toks[v])


if __name__ == "__main__":
    main()
