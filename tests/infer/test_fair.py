"""jielong.infer.fair.FairQueue: turns between clients, fewest running first, FIFO within a
client and for one client alone; and the engine starting another client's request next."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from jielong.config import preset
from jielong.infer.engine import Engine
from jielong.infer.fair import FairQueue
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer


def req(client, name):
    return SimpleNamespace(client=client, name=name, finish_reason=None)


def test_round_robin_fewest_running_first_and_fifo_within_a_client():
    q = FairQueue()
    for r in [req("a", f"a{i}") for i in range(4)] + [req("b", "b0"), req("b", "b1"), req("c", "c0")]:
        q.append(r)
    assert len(q) == 7 and q[0].name == "a0"
    order = [q.popleft() for _ in range(5)]
    assert [r.name for r in order] == ["a0", "b0", "c0", "a1", "b1"]
    # a has 2 running, c 1, c's queue empty: a's next; once a's finish, a goes first again
    q.append(req("c", "c1"))
    assert q[0].name == "c1"  # c runs 1, a runs 2
    for r in order:
        r.finish_reason = "stop"
    assert q[0].name in ("a2", "c1") and q.popleft().name == "a2"  # a served longest ago
    rest = list(q)
    assert [r.name for r in rest] == ["c1", "a3"]  # in turn order: a was just served
    q.remove(rest[0])
    assert [q.popleft().name] == ["a3"] and not q and len(q) == 0


def test_one_client_is_first_in_first_out():
    q = FairQueue()
    rs = [req(None, i) for i in range(6)]
    for r in rs:
        q.append(r)
    assert [q.popleft().name for _ in range(6)] == list(range(6))


def test_a_preempted_request_goes_back_to_the_head():
    q = FairQueue()
    for r in [req("a", "a0"), req("a", "a1"), req("b", "b0")]:
        q.append(r)
    a0 = q.popleft()
    assert q[0].name == "b0"  # a has one running
    q.appendleft(a0)  # the engine preempted it: first again, and a runs none
    assert q[0] is a0 and [r.name for r in q] == ["a0", "a1", "b0"]
    assert [q.popleft().name for _ in range(3)] == ["a0", "b0", "a1"]


def test_engine_starts_the_other_clients_request_next():
    torch.set_num_threads(1)
    tok = train_tokenizer(["hello world, 你好世界, 妳好世界"] * 20, vocab_size=280)
    torch.manual_seed(0)
    net = Transformer(preset("test", vocab_size=tok.vocab_size))
    engine = Engine(net, tok, slots=1, context=64).start()
    p = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    greedy = [engine.submit(tok.encode("hello"), p, client="greedy") for _ in range(6)]
    small = engine.submit(tok.encode("你好"), p, client="small")
    done = engine.complete(tok.encode("你好"), p)  # client None: waits its turn too
    deadline = time.monotonic() + 30
    while any(r.finish_reason is None for r in greedy) and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.close()
    starts = sorted(greedy + [small], key=lambda r: r.first_token_at)
    # greedy's first may already run; the small request starts right after it, not 6th
    assert starts.index(small) <= 1, [r.client for r in starts]
    assert small.output == done.token_ids  # fairness leaves greedy outputs alone
