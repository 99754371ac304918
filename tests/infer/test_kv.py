"""The paged KV cache: blocks, prefix caching, chunked prefill and preemption leave every
greedy reply what plain generation gives, and the pool's books balance."""

import itertools
import queue
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from jielong.config import preset
from jielong.errors import UserError
from jielong.infer.engine import Engine
from jielong.infer.generate import generate_ids
from jielong.infer.kv import (
    BlockPool,
    PagedView,
    block_hash,
    blocks_for_memory,
    bytes_per_token,
    gather,
    pool_dtype,
)
from jielong.infer.sampling import SamplingParams
from jielong.lora import LoraConfig, add_adapter, set_adapter
from jielong.model import Transformer


class Chars:
    """A tokenizer stand-in: token i is the character U+4E00 + i."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(0x4E00 + i) for i in ids)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(preset("test", vocab_size=300, initializer_range=0.2)).eval()
    add_adapter(m, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), "a")
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    set_adapter(m, None)
    return m


def prompt(seed: int, n: int) -> list[int]:
    return torch.randint(3, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def alone(model, p, n, adapter=None, **kw):
    set_adapter(model, adapter)
    try:
        return generate_ids(model, [p], SamplingParams(n, temperature=0, **kw))[0]
    finally:
        set_adapter(model, None)


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **kw)


def test_prefix_hits_and_chunks_give_the_replies_of_plain_generation(model):
    system = prompt(0, 23)
    turn1 = system + prompt(1, 5)
    e = Engine(model, Chars(), slots=3, block_size=4, prefill_chunk=7).start()
    first = e.complete(turn1, greedy(9)).token_ids
    assert first == alone(model, turn1, 9) and len(set(first)) > 3
    s = e.stats()
    assert s["prefix_hit_tokens"] == 0 and s["prefix_query_tokens"] == 28
    assert s["prefill_chunks"] == 4  # 28 prompt tokens, 7 a step
    # the next turn of the chat: its first 28 + 9 - 1 positions are cached, 9 full blocks
    turn2 = turn1 + first + prompt(2, 6)
    assert e.complete(turn2, greedy(8)).token_ids == alone(model, turn2, 8)
    s = e.stats()
    assert s["prefix_hit_tokens"] == 36 and s["prefix_query_tokens"] == 28 + 43
    # another user, the same system prompt (5 full blocks), three at once
    others = [system + prompt(k, 3 + k) for k in (3, 4, 5)]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda p: e.complete(p, greedy(6)).token_ids, others))
    assert got == [alone(model, p, 6) for p in others]
    assert e.stats()["prefix_hit_tokens"] >= 36 + 20
    # a different adapter computes the same tokens under other weights: no hit
    hits = e.stats()["prefix_hit_tokens"]
    assert e.complete(turn1, greedy(5), adapter="a").token_ids == alone(model, turn1, 5, "a")
    assert e.stats()["prefix_hit_tokens"] == hits
    assert e.complete(turn1, greedy(5), adapter="a").token_ids == alone(model, turn1, 5, "a")
    assert e.stats()["prefix_hit_tokens"] == hits + 24
    s = e.stats()
    e.close()
    assert s["kv_blocks_used"] == 0 and s["kv_block_size"] == 4 and s["kv_blocks_total"] == 3 * 64


def test_without_the_prefix_cache_or_chunks_the_replies_are_the_same(model):
    p = prompt(6, 30)
    e = Engine(model, Chars(), slots=2, prefix_cache=False, prefill_chunk=None).start()
    assert e.complete(p, greedy(7)).token_ids == e.complete(p, greedy(7)).token_ids == alone(model, p, 7)
    s = e.stats()
    e.close()
    assert s["prefix_hit_tokens"] == 0 and s["prefill_chunks"] == 2


def test_a_full_pool_preempts_the_latest_and_resumes_it_unchanged(model):
    # 12 blocks of 4: two requests of 8 + 30 tokens (10 blocks each) cannot both hold theirs
    e = Engine(model, Chars(), slots=2, kv_blocks=12, block_size=4, prefill_chunk=5).start()
    ps = [prompt(7, 8), prompt(8, 8)]
    kw = dict(repetition_penalty=1.3, frequency_penalty=0.5)  # the sampling state survives too
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda p: e.complete(p, greedy(30, **kw)).token_ids, ps))
    s = e.stats()
    e.close()
    assert got == [alone(model, p, 30, **kw) for p in ps]
    assert s["preempted"] >= 1 and s["kv_blocks_used"] == 0 and s["generated_tokens"] == 60


def test_sliding_window_reads_the_blocks_by_position(model):
    model.config.sliding_window = 6
    try:
        e = Engine(model, Chars(), slots=2, block_size=4, prefill_chunk=5).start()
        ps = [prompt(9, 17), prompt(10, 11)]
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda p: e.complete(p, greedy(12)).token_ids, ps))
        e.close()
        assert got == [alone(model, p, 12) for p in ps]
    finally:
        model.config.sliding_window = None


def test_a_request_the_pool_cannot_hold_is_refused(model):
    e = Engine(model, Chars(), slots=1, kv_blocks=3, block_size=4).start()
    with pytest.raises(UserError, match=r"\+ max_tokens \(8\) is more than the 12 tokens the KV "
                                        r"cache holds \(raise --kv_memory_gb\); .* at most 2"):
        e.submit([5] * 10, greedy(8))
    with pytest.raises(UserError, match="the prompt is 13 tokens, but the KV cache holds 12"):
        e.submit([5] * 13, greedy(1))
    c = e.complete([5] * 10, SamplingParams(temperature=0, ignore_eos=True))  # max_tokens: the rest
    e.close()
    assert len(c.token_ids) == 2


def test_the_pool_shares_named_blocks_and_evicts_the_least_recent(model):
    pool = BlockPool(model, blocks=4, block_size=2)
    a, b, c = pool.take(), pool.take(), pool.take()
    ha = block_hash(b"", [1, 2], None)
    hb = block_hash(ha, [3, 4], None)
    assert block_hash(b"", [1, 2], "x") != ha != block_hash(b"", [1, 3], None)
    pool.register(a, ha)
    pool.register(b, hb)
    pool.release([a, b, c])  # tail first: c free, b then a cached
    assert pool.available() == 4 and pool.used() == 0
    assert pool.match([1, 2, 3, 4, 5], None) == ([a, b], [ha, hb])
    assert pool.match([1, 2, 3, 4], None) == ([a], [ha])  # one token left to compute
    assert pool.refs[a] == 2 and pool.available() == 2  # c and the last block
    pool.release([a, b])
    pool.release([a])
    order = [pool.take() for _ in range(4)]  # free blocks first, then the cached, b before a
    assert order[2:] == [b, a] and pool.by_hash == {}
    assert blocks_for_memory(model, 1e-3, 16) == 10**6 // (2 * 2 * 2 * 16 * 4 * 16)


def test_gather_reads_each_rows_slots_in_order_and_a_bf16_pool_is_float32_on_a_cpu():
    pool = torch.randn(40, 2, 8)  # (slots, kv heads, head dim)
    read = torch.tensor([[3, 4, 5, 0], [39, 7, 7, 1]])
    assert torch.equal(gather(pool, read), pool[read].transpose(1, 2))
    model = Transformer(preset("test", vocab_size=64)).to(torch.bfloat16)
    assert pool_dtype(model) == torch.float32
    assert bytes_per_token(model) == 2 * 2 * 2 * 16 * 4  # layers, kv heads, head dim, 4 bytes
    assert BlockPool(model, 2, 4).k.dtype == torch.float32


def test_a_step_without_padding_writes_each_rows_new_keys_to_its_own_slots():
    """Decoding (one token a row) and packed prefill feed no padding query: their new keys
    are a reshape of the layer's (no boolean pick), and still land in each row's slots in
    order; right-padded rows pick out their real queries."""
    model = Transformer(preset("test", vocab_size=64))
    view = PagedView(BlockPool(model, 6, 4))
    view.set([[2], [0, 5]], [1, 6], [1, 1])  # one decode step: positions 1 and 6
    assert view.valid is None and view.write.tolist() == [2 * 4 + 1, 5 * 4 + 2]
    k = torch.randn(2, 2, 1, 16)  # (rows, kv heads, T, head dim)
    view.update(0, k, -k)
    assert torch.equal(view.pool.k[0, 9], k[0, :, 0]) and torch.equal(view.pool.k[0, 22], k[1, :, 0])
    assert torch.equal(view.pool.v[0, 22], -k[1, :, 0])
    view.set([[1], [3]], [0, 0], [3, 1])  # padded: row 1's second and third queries are padding
    k = torch.randn(2, 2, 3, 16)
    assert torch.equal(view.queries(k), torch.stack([k[0, :, 0], k[0, :, 1], k[0, :, 2], k[1, :, 0]]))
    view.set_packed([[1], [3]], [0, 0], [3, 1])
    assert view.valid is None and torch.equal(view.queries(k[:1]), k[0].transpose(0, 1))


def test_a_packed_prefill_writes_the_keys_and_gives_the_logits_of_padded_rows(model):
    """Rows of mixed lengths, two continuing keys already cached, fed as one unpadded row
    (PagedView.set_packed): the same keys and values land in the pool and every token gets
    the logits right-padded rows give it."""
    pool = BlockPool(model, 12, 4)
    view = PagedView(pool)
    tables, starts, counts = [[0, 1, 2], [3, 4], [5, 6, 7, 8]], [0, 3, 5], [9, 4, 8]
    seqs = [prompt(20 + i, s + c) for i, (s, c) in enumerate(zip(starts, counts, strict=True))]
    with torch.no_grad():  # the cached part first: rows 1 and 2's first 3 and 5 tokens
        early = torch.tensor([seqs[1][:3] + [0, 0], seqs[2][:5]])
        positions, mask = view.set(tables[1:], [0, 0], [3, 5])
        model(early, positions, view, mask)
        k0, v0 = pool.k.clone(), pool.v.clone()
        ids = torch.zeros((3, 9), dtype=torch.long)
        for i, (q, s, c) in enumerate(zip(seqs, starts, counts, strict=True)):
            ids[i, :c] = torch.tensor(q[s:])
        positions, mask = view.set(tables, starts, counts)
        padded = model(ids, positions, view, mask)
        k1, v1 = pool.k.clone(), pool.v.clone()
        pool.k.copy_(k0)
        pool.v.copy_(v0)
        flat = torch.tensor([[t for q, s in zip(seqs, starts, strict=True) for t in q[s:]]])
        positions, mask = view.set_packed(tables, starts, counts)
        assert positions.tolist() == [list(range(9)) + [3, 4, 5, 6] + list(range(5, 13))]
        assert mask.shape == (1, 1, 21, 9 + 7 + 13)
        packed = model(flat, positions, view, mask)
    ends = list(itertools.accumulate(counts))
    for i, c in enumerate(counts):
        assert torch.allclose(packed[0, ends[i] - c:ends[i]], padded[i, :c], atol=1e-5)
    assert torch.allclose(pool.k, k1, atol=1e-6) and torch.allclose(pool.v, v1, atol=1e-6)
    assert (pool.k != k0).any()


def test_prompts_of_mixed_lengths_prefill_packed_and_reply_as_alone(model):
    e = Engine(model, Chars(), slots=4, block_size=4).start()
    ps = [prompt(30 + k, n) for k, n in enumerate([3, 17, 5, 11])]
    events: queue.SimpleQueue = queue.SimpleQueue()
    with e.lock:  # the loop waits until all four are queued, then admits them together
        reqs = [e.submit(p, greedy(6), None, events.put) for p in ps]
    finished = 0
    while finished < len(ps):
        finished += bool(events.get(timeout=60).finish_reason)
    s = e.stats()
    e.close()
    assert [r.output for r in reqs] == [alone(model, p, 6) for p in ps]
    assert s["packed_prefills"] == 1 and s["prefill_chunks"] == 4  # 36 tokens, not 4 × 17
    windowed = Engine(model, Chars(), slots=2)
    windowed.windowed = True  # the rule: sliding windows always pad
    assert not windowed._packs([0, 0], [3, 17]) and e._packs([0, 0], [3, 17])
    assert not e._packs([0], [17])  # one row: nothing to pack
    assert not e._packs([0, 0], [8, 8])  # equal lengths: no padding to save
