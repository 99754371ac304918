"""The time the safety rails add to a served reply: the same requests to one `jielong serve`
app with the default rails and with `--safety off`, interleaved, side by side.

Run as:
    python bench/bench_rails_serve.py --model runs/demo/assistant --requests 60

Each round sends one benign message (繁, 简, en in turn, from bench/safety_texts/heldout.tsv's
safe rows) twice, once per setting, as a non-streaming and as a streaming chat completion
(greedy, exactly --max_tokens tokens, the end-of-turn token ignored so every reply has the
same length; the rails let them through, so both settings generate the same reply). Reported: latency p50/p95 per setting and their difference, and from the server's
own Prometheus histogram (jielong_safety_check_seconds) the mean time of one input-rail
check and the output rail's time per generated token.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import threading
import time

import httpx
import uvicorn
from bench_safety import read_heldout

from jielong.hub import open_model, stop_ids
from jielong.infer.engine import Engine
from jielong.safety.policy import load_policy
from jielong.safety.rails import Rails
from jielong.serve.app import create_app


def benign(n: int) -> list[str]:
    """`n` safe messages of the held-out set, the scripts in turn."""
    by_script: dict[str, list[str]] = {}
    for r in read_heldout():
        if not r["labels"]:
            by_script.setdefault(r["script"], []).append(r["text"])
    lists = [by_script[k] for k in sorted(by_script)]
    return [lists[i % len(lists)][i // len(lists) % len(lists[i % len(lists)])] for i in range(n)]


def serve(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def histogram(metrics: str, rail: str) -> tuple[float, float]:
    def value(kind: str) -> float:
        m = re.search(rf'jielong_safety_check_seconds_{kind}{{rail="{rail}"}} ([0-9.e+-]+)', metrics)
        return float(m.group(1)) if m else 0.0
    return value("sum"), value("count")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/demo/assistant")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--max_tokens", type=int, default=128)
    args = ap.parse_args()
    model, tok, gen = open_model(args.model)
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=1).start()
    app = create_app(engine, tok, "bench", gen)
    on, off = Rails(load_policy("default")), Rails(load_policy("off"))
    server, url = serve(app)
    times: dict[tuple[str, bool], list[float]] = {}
    tokens = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        for i, text in enumerate(benign(args.requests)):
            for setting, rails in (("on", on), ("off", off))[:: 1 if i % 2 else -1]:
                app.state.served.rails = rails
                for stream in (False, True):
                    body = {"model": "bench", "messages": [{"role": "user", "content": text}],
                            "temperature": 0, "max_tokens": args.max_tokens, "stream": stream,
                            "ignore_eos": True}
                    t = time.perf_counter()
                    r = client.post("/v1/chat/completions", json=body)
                    r.read()
                    times.setdefault((setting, stream), []).append(time.perf_counter() - t)
                    if setting == "on" and not stream:
                        tokens += r.json()["usage"]["completion_tokens"]
        metrics = client.get("/metrics").text
    server.should_exit = True
    engine.close()
    print(f"{args.requests} requests per setting and mode, greedy, max_tokens {args.max_tokens}, "
          f"model {args.model}")
    print("| mode | rails | p50 ms | p95 ms |")
    print("| --- | --- | ---: | ---: |")
    for stream in (False, True):
        for setting in ("off", "on"):
            xs = times[(setting, stream)]
            print(f"| {'stream' if stream else 'whole'} | {setting} | {1000 * pct(xs, .5):.1f} | "
                  f"{1000 * pct(xs, .95):.1f} |")
        d50 = pct(times[("on", stream)], .5) - pct(times[("off", stream)], .5)
        d95 = pct(times[("on", stream)], .95) - pct(times[("off", stream)], .95)
        print(f"| {'stream' if stream else 'whole'} | added | {1000 * d50:+.1f} | {1000 * d95:+.1f} |")
    s_in, n_in = histogram(metrics, "input")
    s_out, _ = histogram(metrics, "output")
    per_req = tokens / max(1, args.requests)
    print(f"input rail: {1000 * s_in / max(1, n_in):.3f} ms per check ({n_in:.0f} checks)")
    print(f"output rail: {1000 * s_out / max(1, 2 * tokens):.4f} ms per generated token "
          f"({per_req:.1f} tokens per reply; whole and stream replies)")
    print(f"for scale: mean latency with rails off, whole: "
          f"{1000 * statistics.mean(times[('off', False)]):.1f} ms")


if __name__ == "__main__":
    main()
