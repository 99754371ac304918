"""llama.cpp's side of bench_llamacpp.py: greedy decoding of one GGUF file with
llama-cpp-python, timed; run by that script in the Python that has llama-cpp-python.

Run as:  python bench/llamacpp_worker.py MODEL.gguf '{"prompt": [...], "new": 128, ...}'

Prints one JSON line: the greedy token ids, the seconds of each prefill (the prompt in one
batch, then the argmax of its last logits) and of each whole run (prefill + new - 1
one-token evals), and the peak resident memory. No jielong import: llama-cpp-python lives
in its own environment (it builds from source), without torch.

The loop is `Llama.eval` (llama_decode on a batch) and numpy's argmax of the last logits,
as llama-cpp-python's own `generate` does at temperature 0, minus its sampler chain.
Threads: n_threads and n_threads_batch both --threads.
"""

from __future__ import annotations

import json
import sys
import time


def peak_rss_mb() -> float:
    """VmHWM, this process's peak resident memory, in MiB (ru_maxrss would be the parent's)."""
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024


def main() -> None:
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    runtime = peak_rss_mb()

    path, spec = sys.argv[1], json.loads(sys.argv[2])
    prompt, new, threads = spec["prompt"], spec["new"], spec["threads"]
    llm = Llama(model_path=path, n_ctx=len(prompt) + new + 8, n_batch=max(64, len(prompt)),
                n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)

    vocab = llm.n_vocab()

    def argmax() -> int:  # the last evaluated token's logits (logits_all off keeps no copy)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(vocab,))
        return int(logits.argmax())

    def first() -> int:
        llm.reset()
        llm.eval(prompt)
        return argmax()

    def run() -> list[int]:
        out = [first()]
        while len(out) < new:
            llm.eval([out[-1]])
            out.append(argmax())
        return out

    ids = run()  # warm-up, and the tokens compared with jielong's
    prefill, total = [], []
    for _ in range(spec["rounds"]):
        t = time.perf_counter()
        first()
        prefill.append(time.perf_counter() - t)
        t = time.perf_counter()
        again = run()
        total.append(time.perf_counter() - t)
        assert again == ids, "llama.cpp's greedy tokens changed between runs"
    print(json.dumps({"ids": ids, "prefill_s": prefill, "total_s": total,
                      "peak_rss_mb": peak_rss_mb(),
                      "runtime_rss_mb": runtime}))


if __name__ == "__main__":
    main()
