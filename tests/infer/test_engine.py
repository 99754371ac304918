"""The serving engine: continuous batching gives each request what it would get alone."""

import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from jielong.checkpoint import load_model
from jielong.errors import UserError
from jielong.hub import open_model
from jielong.infer.engine import SWITCH_INTERVAL, Engine, one_thread, visible
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.lora import LoraConfig, add_adapter, set_adapter
from jielong.quant import PackedLinear
from jielong.tokenizer import Tokenizer

pytest.importorskip("transformers")
from hf_families import make_hf_dir  # noqa: E402

TEXTS = ["Hello there", "今天天氣很好！我們去", "a", "The quick brown fox jumps over the lazy dog and", "从前有座山"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return make_hf_dir(tmp_path_factory.mktemp("engine"), "qwen2")


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return load_model(qwen_dir).eval(), Tokenizer.from_dir(qwen_dir)


@pytest.fixture
def engine(qwen):
    model, tok = qwen
    e = Engine(model, tok, slots=3).start()
    yield e
    e.close()


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, **kw)


def alone(model, prompt, n):
    return generate_ids(model, [prompt], SamplingParams(n, temperature=0))[0]


def test_greedy_replies_equal_plain_generation_alone_and_in_a_crowd(qwen, engine):
    model, tok = qwen
    prompts = [tok.encode(t) for t in TEXTS]
    lengths = [20, 7, 3, 25, 12]
    want = [alone(model, p, n) for p, n in zip(prompts, lengths, strict=True)]
    for p, n, w in zip(prompts, lengths, want, strict=True):
        assert engine.complete(p, greedy(n)).token_ids == w
    # 15 requests through 3 slots: they join and leave the batch at different steps
    with ThreadPoolExecutor(15) as pool:
        got = list(pool.map(lambda i: engine.complete(prompts[i % 5], greedy(lengths[i % 5])), range(15)))
    for i, c in enumerate(got):
        assert c.token_ids == want[i % 5], i
        assert c.finish_reason == "length" and c.prompt_tokens == len(prompts[i % 5])
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    s = engine.stats()
    assert s["requests"] == 20 and s["running"] == s["waiting"] == 0
    assert s["generated_tokens"] == 4 * sum(lengths)


def test_sliding_window_decodes_as_plain_generation(qwen):
    model, tok = qwen
    model.config.sliding_window = 6
    try:
        e = Engine(model, tok, slots=2).start()
        prompts = [tok.encode(TEXTS[3]), tok.encode(TEXTS[1])]
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda p: e.complete(p, greedy(16)).token_ids, prompts))
        e.close()
        assert got == [alone(model, p, 16) for p in prompts]
    finally:
        model.config.sliding_window = None


def test_a_short_request_finishes_while_a_long_one_runs(qwen, engine):
    model, tok = qwen
    events: queue.SimpleQueue = queue.SimpleQueue()
    long = engine.submit(tok.encode(TEXTS[0]), greedy(200, ignore_eos=True), on_event=events.put)
    while len(long.output) < 5:  # it is decoding
        time.sleep(0.005)
    short = engine.complete(tok.encode(TEXTS[1]), greedy(4))
    assert short.finish_reason == "length" and len(short.token_ids) == 4
    assert long.finished_at is None and 5 <= len(long.output) < 200  # still going
    while long.finished_at is None:
        time.sleep(0.01)
    assert long.finish_reason == "length" and len(long.output) == 200
    streamed = []
    while not events.empty():
        streamed.append(events.get().text)
    assert "".join(streamed) == long.text == tok.decode(long.output, skip_special_tokens=True)


def test_cancel_frees_the_slot_at_once(qwen):
    model, tok = qwen
    e = Engine(model, tok, slots=1).start()
    done = threading.Event()
    reasons = []

    def on_event(ev):
        if ev.finish_reason:
            reasons.append(ev.finish_reason)
            done.set()

    long = e.submit(tok.encode(TEXTS[0]), greedy(400, ignore_eos=True), on_event=on_event)
    while not long.output:
        time.sleep(0.005)
    queued = e.submit(tok.encode(TEXTS[1]), greedy(3), on_event=None)  # waits: one slot
    assert e.stats()["waiting"] == 1
    long.cancel()
    assert done.wait(5) and reasons == ["cancelled"] and len(long.output) < 400
    while queued.finished_at is None:
        time.sleep(0.005)
    assert queued.finish_reason == "length" and queued.output == alone(model, tok.encode(TEXTS[1]), 3)
    assert e.stats()["running"] == 0
    e.close()


def test_streamed_text_is_whole_and_stops_before_a_stop_string(qwen, engine):
    model, tok = qwen
    prompt = tok.encode(TEXTS[1])
    full = engine.complete(prompt, greedy(30))
    text = full.text  # a random model's: bytes that are not always UTF-8
    at = next(i for i in range(6, len(text) - 2) if "\ufffd" not in text[i - 1:i + 2])
    stop = text[at:at + 2]  # a stop string from the middle of the reply
    pieces: queue.SimpleQueue = queue.SimpleQueue()
    engine.submit(prompt, greedy(30, stop=["never there", stop]), on_event=pieces.put)
    streamed, reason = [], None
    while reason is None:
        ev = pieces.get(timeout=10)
        streamed.append(ev.text)
        reason = ev.finish_reason
    assert reason == "stop"
    assert "".join(streamed) == text[:text.find(stop)]


def test_visible_holds_back_half_characters_and_stop_string_starts():
    assert visible("你好\ufffd", 0, []) == ("你好\ufffd", 2, False)  # 3rd character: bytes to come
    assert visible("你好嗎", 2, []) == ("你好嗎", 3, False)
    assert visible("答案是 ST", 0, ["STOP"]) == ("答案是 ST", 4, False)  # "ST" may begin STOP
    assert visible("答案是 STAR", 4, ["STOP"]) == ("答案是 STAR", 8, False)
    assert visible("答案是 STOP 了", 4, ["了", "STOP"]) == ("答案是 ", 4, True)  # the first stop
    assert visible("ab。", 2, ["。"]) == ("ab", 2, True)


def test_stop_tokens_end_a_reply_unless_ignore_eos(qwen):
    model, tok = qwen
    prompt = tok.encode(TEXTS[0])
    first = alone(model, prompt, 8)
    e = Engine(model, tok, stop_ids={first[3]}, slots=2).start()
    c = e.complete(prompt, greedy(8))
    assert c.finish_reason == "stop" and c.token_ids == first[:first.index(first[3])]
    assert e.complete(prompt, greedy(8, ignore_eos=True)).token_ids == first
    assert e.complete(prompt, greedy(8, ignore_eos=True, stop_token_ids=[first[5]])).token_ids == first[:first.index(first[5])]
    e.close()


def test_a_seed_gives_the_same_sample_whatever_else_runs(qwen, engine):
    model, tok = qwen
    prompt = tok.encode(TEXTS[4])
    p = dict(max_tokens=16, temperature=1.0, top_p=0.95, top_k=40, min_p=0.02,
             presence_penalty=0.3, frequency_penalty=0.2, repetition_penalty=1.1)
    ref = engine.complete(prompt, SamplingParams(seed=7, **p)).token_ids
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: engine.complete(prompt, SamplingParams(seed=s, **p)).token_ids,
                            [7, 8, 9, 7]))
    assert got[0] == got[3] == ref
    assert len({tuple(g) for g in got}) > 1  # other seeds sample otherwise


def test_logprobs_are_the_models_own(qwen, engine):
    model, tok = qwen
    prompt = tok.encode(TEXTS[0])
    c = engine.complete(prompt, greedy(5, logprobs=3))
    ids = torch.tensor([prompt + c.token_ids])
    with torch.no_grad():
        logp = model(ids)[0].log_softmax(-1)
    for i, lp in enumerate(c.logprobs):
        row = logp[len(prompt) - 1 + i]
        assert lp.token == c.token_ids[i]
        assert lp.logprob == pytest.approx(float(row[lp.token]), abs=1e-4)
        assert [t for t, _ in lp.top] == row.topk(3).indices.tolist()
        assert lp.top[0][0] == lp.token  # greedy: the likeliest


def test_each_request_runs_with_its_own_adapter(qwen_dir):
    model, tok = load_model(qwen_dir).eval(), Tokenizer.from_dir(qwen_dir)
    add_adapter(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]), "a")
    add_adapter(model, LoraConfig(r=4, target_modules=["k_proj", "up_proj"]), "b")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    prompts = [tok.encode(t) for t in TEXTS[:3]]
    want = {}
    for name in (None, "a", "b"):
        set_adapter(model, name)
        want[name] = [alone(model, p, 10) for p in prompts]
    assert want["a"] != want[None] != want["b"]
    e = Engine(model, tok, slots=9).start()
    jobs = [(name, i) for name in (None, "a", "b") for i in range(3)]
    with ThreadPoolExecutor(9) as pool:
        got = list(pool.map(lambda j: e.complete(prompts[j[1]], greedy(10), adapter=j[0]).token_ids, jobs))
    for (name, i), g in zip(jobs, got, strict=True):
        assert g == want[name][i], (name, i)
    vecs = e.embed([prompts[0], prompts[0]]).result(10)
    assert torch.tensor(vecs).norm(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert e.embed([prompts[0]], adapter="a").result(10) != vecs[:1]
    with pytest.raises(UserError, match="unknown adapter 'c'.*a, b"):
        e.submit(prompts[0], greedy(3), adapter="c")
    e.close()


def test_requests_the_context_cannot_hold_are_refused(qwen):
    model, tok = qwen
    e = Engine(model, tok, slots=1, context=32).start()
    with pytest.raises(UserError, match="the prompt is 40 tokens, but the model's context is 32"):
        e.submit([5] * 40, greedy(1))
    with pytest.raises(UserError, match=r"\+ max_tokens \(20\) is more than .* at most 12"):
        e.submit([5] * 20, greedy(20))
    with pytest.raises(UserError, match="temperature=-1"):
        e.submit([5] * 3, SamplingParams(temperature=-1))
    with pytest.raises(UserError, match="empty"):
        e.submit([], greedy(2))
    with pytest.raises(UserError, match=r"token ids must be in \[0, 463\); the prompt has \[463, -1\]"):
        e.submit([5, 463, -1], greedy(2))
    with pytest.raises(UserError, match="seed=.* must fit in 64 bits"):
        e.submit([5], SamplingParams(seed=2**70))
    c = e.complete([5] * 20, SamplingParams(temperature=0, ignore_eos=True))  # max_tokens: the rest
    assert len(c.token_ids) == 12 and c.finish_reason == "length"
    e.close()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_the_crowd_decodes_as_each_alone(qwen_dir, device):
    model, tok = load_model(qwen_dir, device=device).eval(), Tokenizer.from_dir(qwen_dir)
    prompts = [tok.encode(t) for t in TEXTS]
    want = [alone(model, p, 16) for p in prompts]
    e = Engine(model, tok, slots=4).start()
    with ThreadPoolExecutor(10) as pool:
        got = list(pool.map(lambda i: e.complete(prompts[i % 5], greedy(16)).token_ids, range(10)))
    e.close()
    assert got == [want[i % 5] for i in range(10)]


def test_a_bf16_model_on_packed_weights_decodes_as_each_alone(qwen_dir, monkeypatch):
    """What `jielong serve --dtype bfloat16` runs on a CPU: weights packed for oneDNN, the KV
    pool in float32 (torch's bf16 attention is slow there), so attention runs in float32."""
    monkeypatch.setattr("jielong.quant.PACK_MIN_WEIGHTS", 0)  # pack this tiny model's layers too
    model, tok, _ = open_model(qwen_dir, dtype="bfloat16", pack=True)
    assert isinstance(model.model.layers[0].mlp.up_proj, PackedLinear)
    plain = load_model(qwen_dir, dtype=torch.bfloat16).eval()
    prompts = [tok.encode(t) for t in TEXTS]
    e = Engine(model, tok, slots=4).start()
    try:
        assert e.pool.k.dtype == torch.float32
        alone_ = [e.complete(p, greedy(12, logprobs=0)) for p in prompts]
        with ThreadPoolExecutor(10) as pool:
            got = list(pool.map(lambda i: e.complete(prompts[i % 5], greedy(12)).token_ids, range(10)))
    finally:
        e.close()
    assert got == [alone_[i % 5].token_ids for i in range(10)]
    for p, c in zip(prompts, alone_, strict=True):  # the first token: the plain bf16 model's
        with torch.no_grad():
            logits = plain(torch.tensor([p]))[0, -1].float()
        assert c.token_ids[0] == int(logits.argmax())
        want = torch.log_softmax(logits, -1)[c.token_ids[0]].item()
        assert abs(c.logprobs[0].logprob - want) < 0.05


def test_the_engine_loop_runs_on_the_threads_it_was_given(qwen):
    """A server loads on one thread and gives the engine's loop the count (one OpenMP team)."""
    model, tok = qwen
    before = torch.get_num_threads()
    with one_thread() as n:
        assert n == before and torch.get_num_threads() == 1
        e = Engine(model, tok, slots=1, threads=2).start()
    assert torch.get_num_threads() == before
    try:
        assert e.call(lambda m: torch.get_num_threads()).result() == 2
    finally:
        e.close()


def test_starting_an_engine_lowers_the_gil_switch_interval_never_raises_it(qwen):
    """The engine's thread takes the GIL back after every torch call; a server's event loop
    holding it would hand it over only each switch interval (Engine.start)."""
    model, tok = qwen
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        e = Engine(model, tok, slots=1).start()
        e.close()
        assert SWITCH_INTERVAL < 0.005 and sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL, rel=0.05)
        sys.setswitchinterval(0.0001)
        e = Engine(model, tok, slots=1).start()
        e.close()
        assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)  # kept in µs
    finally:
        sys.setswitchinterval(before)


def test_requests_that_arrive_during_a_prefill_are_prefilled_before_the_decode(qwen):
    """A burst: B and C arrive while A's prompt is being fed; they are prefilled next and the
    three decode together, with no decode of A alone in between; and only once: D, arriving
    during that second prefill, waits for the three's decode. Replies are each one's alone."""
    model, tok = qwen
    e = Engine(model, tok, slots=4)
    prompts = [tok.encode(t) for t in TEXTS[:4]]
    turns, reqs = [], []
    prefill, decode = e._prefill, e._decode

    def traced_prefill():
        fed = prefill()
        if fed:
            turns.append(("prefill", len(e.running)))
            arriving = {1: prompts[1:3], 2: prompts[3:]}.get(len(turns), [])
            reqs.extend(e.submit(p, greedy(4)) for p in arriving)
        return fed

    def traced_decode():
        if e.running:
            turns.append(("decode", len(e.running)))
        decode()

    e._prefill, e._decode = traced_prefill, traced_decode
    e.start()
    try:
        reqs.append(e.submit(prompts[0], greedy(4)))
        deadline = time.time() + 60
        while (len(reqs) < 4 or any(r.finish_reason is None for r in reqs)) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        e.close()
    assert turns[:5] == [("prefill", 1), ("prefill", 3), ("decode", 3), ("prefill", 4),
                         ("decode", 4)], turns
    by_prompt = {tuple(r.prompt): r.output for r in reqs}
    assert [by_prompt[tuple(p)] for p in prompts] == [alone(model, p, 4) for p in prompts]
