"""The demo's "look inside" stage (4): the pretrained model's workings in pictures, with no
training — jielong.inspect's views run on the model pretraining just made, in seconds.

- the next-token view (接龍, inspect/nexttoken.py): the likeliest next tokens after a world
  prompt with their probabilities, and the chains greedy and sampling make from it;
- attention (inspect/attention.py) on 小美把蘋果送給阿鳳，她很開心。, the notes' 小美把禮物送給
  小芳 told with the world's people and words: how much 「她」 gives each person in each layer
  (head mean, pieces of a name summed) and after rollout, the heatmaps of the layer where it
  looks at the names most and of the rollout;
- contextual embeddings (inspect/embeddings.py): 蘋果 (and English "apple") in fruit and in
  phone sentences, the forms the corpus says them in (world.SENSES with the world's names),
  the mean cosine of same-sense and of fruit–phone pairs per layer, and a PCA of the last
  layer. In these wordings the demo model pulls the senses apart (one run: 0.76 same sense
  against 0.63 fruit–phone at the last layer, and the PCA's first axis splits them); in new
  wordings (樹上的蘋果又紅又甜, 小美的新手機是蘋果的) it did much less (0.71 against 0.69):
  a 1M-parameter model learns the contexts it read, not yet the idea of a fruit;
- the logit lens (inspect/lens.py) on a world prompt: each layer's top next token;
- the n-gram baseline (inspect/ngram.py, Markov's idea): character and token 3-grams with
  Kneser–Ney smoothing counted on the training text, their bits per byte on the validation
  text beside the transformer's (eval.heldout, the same text and measure), and a sample
  from each after the same prompt;
- scaling in miniature (inspect/sweep.py): three widths × two step budgets of the test
  preset trained on the pretraining shards, a few seconds in all, and the power law fitted
  to the runs that no cheaper run beats (Kaplan et al. 2020). So few steps show the early
  part of the curve only: the lesson is the method, not the exponent.

Pictures go to RUN/look/, numbers to results.json["look"], a section to report.md.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from jielong.demo.finetune import bold
from jielong.demo.world import PEOPLE, SENSES
from jielong.eval.heldout import score_texts
from jielong.files import atomic_path
from jielong.infer.generate import generate_text
from jielong.infer.sampling import SamplingParams
from jielong.inspect.attention import attention_weights, heatmaps, rollout, summary
from jielong.inspect.embeddings import cosine_table, pca_2d, plot_pca, word_vectors
from jielong.inspect.lens import lens_table, plot_grid
from jielong.inspect.nexttoken import next_view
from jielong.inspect.ngram import NGram, Symbols, bits_per_byte
from jielong.inspect.pieces import merge_matrix, merged_pieces
from jielong.inspect.sweep import compute_frontier, fit_power_law, plot_compute, train_point
from jielong.plots import font_family

NEXT_PROMPT = "阿明的寵物是"
LENS_PROMPT = "小華最喜歡的顏色是"
SENTENCE, PRONOUN = "小美把蘋果送給阿鳳，她很開心。", "她"
NAMES = ("小美", "阿鳳")  # the giver and the receiver
WORDS = {"蘋果": "zh-Hant", "apple": "en"}  # world.SENSES["apple"] in these languages
NGRAM_N, SAMPLE_PROMPT, SAMPLE_LEN = 3, "阿明", 30
SWEEP_WIDTHS, SWEEP_PRESET = (16, 32, 64), "test"


def sweep_budgets(pretrain_steps: int) -> tuple[int, int]:
    """The sweep's two step budgets: 20 and 40 for the demo's 700 pretraining steps."""
    return max(2, pretrain_steps // 35), max(4, 2 * pretrain_steps // 35)


def next_token(model, tok) -> dict:
    v = next_view(model, tok, NEXT_PROMPT, k=5, steps=8, temperature=0.8, seed=0)
    return {"prompt": v["prompt"], "top": [(t["text"], round(t["prob"], 4)) for t in v["top"]],
            "greedy": [(s["text"], round(s["prob"], 4)) for s in v["greedy"]], "greedy_text": v["greedy_text"],
            "sampled": [(s["text"], round(s["prob"], 4)) for s in v["sampled"]], "sampled_text": v["sampled_text"],
            "temperature": v["temperature"]}


def attention(model, tok, out: Path) -> dict:
    """Where 「她」 looks: each person's share of its attention per layer (head mean), the
    heatmaps of the layer that weighs the two names most, and the rollout."""
    ids = tok.encode(SENTENCE)
    pieces = merged_pieces(tok, ids)
    texts, spans = [t for t, _ in pieces], [s for _, s in pieces]
    weights = attention_weights(model, ids)
    merged, rolled = merge_matrix(weights, spans), merge_matrix(rollout(weights), spans)
    s = summary(merged, rolled, texts, PRONOUN)
    at, starts = s["position"], np.cumsum([0] + [len(t) for t in texts])
    owner = {}  # piece index -> the person whose name it is part of
    for name in NAMES:
        a = SENTENCE.find(name)
        owner.update({j: name for j in range(len(texts)) if a <= starts[j] < a + len(name)})

    def shares(row: torch.Tensor) -> dict[str, float]:
        return {name: round(float(sum(row[j] for j, n in owner.items() if n == name)), 4) for name in NAMES}

    layers = [shares(m.mean(0)[at]) for m in merged]
    best = max(range(len(layers)), key=lambda li: sum(layers[li].values()))
    files = heatmaps(merged, rolled, texts, out, best, None)
    return {"sentence": SENTENCE, "pieces": texts, "token": s["token"], "people": layers,
            "rollout_people": shares(rolled[at]), "top": s["layers"], "rollout_top": s["rollout"],
            "layer": best, "files": [f.name for f in files]}


def sense_sentences(word: str, lang: str) -> tuple[list[str], list[str]]:
    """The fruit and the phone sentences: world.SENSES["apple"]'s templates in `lang` with
    the world's names, those that hold `word` itself ("apples" is another token)."""
    def said(sense: str) -> list[str]:
        out = []
        for i, t in enumerate(SENSES["apple"][sense][lang]):
            at = t.find(word) + len(word)
            if t.find(word) >= 0 and not (t[at:at + 1].isascii() and t[at:at + 1].isalpha()):
                out.append(t.format(s=PEOPLE[i].say(lang), o=PEOPLE[i + 4].say(lang)))
        return out

    return said("fruit"), said("phone")


def embeddings(model, tok, out: Path) -> dict:
    """Per word and layer: the mean cosine of same-sense pairs and of fruit–phone pairs;
    the first word's PCA at the last layer."""
    result = {}
    for n, (word, lang) in enumerate(WORDS.items()):
        fruit, phone = sense_sentences(word, lang)
        vecs = word_vectors(model, tok, word, fruit + phone)
        cos, k = cosine_table(vecs), len(fruit)
        same = np.zeros(cos.shape[1:], dtype=bool)
        same[:k, :k] = same[k:, k:] = True
        np.fill_diagonal(same, False)
        cross = np.zeros_like(same)
        cross[:k, k:] = True
        result[word] = {"fruit": fruit, "phone": phone,
                        "same_sense": [round(float(c[same].mean()), 4) for c in cos],
                        "fruit_phone": [round(float(c[cross].mean()), 4) for c in cos]}
        if n == 0:
            last = len(cos) - 1
            labels = [f"fruit · {x}" for x in fruit] + [f"phone · {x}" for x in phone]
            plot_pca(pca_2d(vecs[last]), labels, word, last, out / "pca.png")
            result["picture"] = {"word": word, "layer": last, "file": "pca.png"}
    return result


def lens(model, tok, out: Path) -> dict:
    """The lens grid; the last position's top token per layer and the first layer from which
    it is the model's own answer."""
    table = lens_table(model, tok, LENS_PROMPT)
    plot_grid(table, out / "lens.png", title=f"logit lens: {LENS_PROMPT}")
    tops = [row[-1] for row in table["layers"]]
    final = tops[-1][0]
    first = len(tops) - 1
    while first > 0 and tops[first - 1][0] == final:
        first -= 1
    return {"prompt": LENS_PROMPT, "tokens": table["tokens"], "last_position": tops, "answer_from_layer": first}


def ngram(model, tok, train: list[str], heldout: list[str], out: Path) -> dict:
    """Character and token 3-grams beside the transformer: bits per byte on `heldout`, and a
    sampled continuation of SAMPLE_PROMPT from each (temperature 1, seed 0)."""
    rows = {}
    for unit in ("char", "token"):
        symbols = Symbols(tok) if unit == "token" else Symbols(chars=sorted({c for d in train for c in d}))
        docs = tok.encode_batch(train) if unit == "token" else map(symbols.encode, train)
        m = NGram(NGRAM_N, symbols.vocab_size, symbols.start, symbols.end).count(docs)
        r = bits_per_byte(m, symbols, heldout)
        prompt = symbols.encode(SAMPLE_PROMPT)
        rows[f"{unit} {NGRAM_N}-gram"] = {
            "bits_per_byte": round(r.bits_per_byte, 4), "ngrams": len(m.ngrams),
            "sample": SAMPLE_PROMPT + symbols.decode(m.generate(SAMPLE_LEN, 1.0, 0, prompt))}
    device = next(model.parameters()).device
    r = score_texts(model, tok, heldout, device=device, progress=False)
    text = generate_text(model, tok, [SAMPLE_PROMPT], SamplingParams(max_tokens=SAMPLE_LEN, temperature=1.0, seed=0))
    rows["transformer"] = {"bits_per_byte": round(r.bits_per_byte, 4), "params": model.config.num_params,
                           "sample": SAMPLE_PROMPT + text[0]}
    bar_chart(rows, out / "bits_per_byte.png", len(heldout))
    return {"models": rows, "heldout": {"documents": r.documents, "bytes": r.bytes}, "train_documents": len(train)}


def bar_chart(rows: dict, png: Path, n_docs: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["font.family"] = font_family()
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    names, bpb = list(rows), [r["bits_per_byte"] for r in rows.values()]
    bars = ax.bar(names, bpb, color=["#9bb7d4", "#6a93c0", "#d9822b"][: len(names)])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set(ylabel="bits per byte (lower is better)",
           title=f"held-out text ({n_docs} documents): n-gram vs transformer")
    ax.title.set_fontsize(9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def sweep(run: Path, tok, seq_len: int, device: str, out: Path, budgets: tuple[int, int]) -> dict:
    """SWEEP_WIDTHS × `budgets` steps of SWEEP_PRESET on RUN/data, the power law and its plot."""
    runs = []
    points = [(w, s) for w in SWEEP_WIDTHS for s in budgets]
    for i, (width, steps) in enumerate(points):
        name = f"hidden-{width}_steps-{steps}"
        runs.append(train_point(out / "sweep" / name, name, {"hidden_size": width}, steps, SWEEP_PRESET, tok,
                                run / "data", min(seq_len, 64),
                                {"batch_size": 8, "lr": 3e-3, "warmup_steps": max(1, budgets[0] // 4), "seed": 0, "device": device},
                                f"{i + 1}/{len(points)}"))
    used = compute_frontier(runs)
    used = used if len(used) >= 3 else runs
    law = fit_power_law([r["compute"] for r in used], [r["val_loss"] for r in used],
                        c=None if len(used) >= 4 else 0.0)
    plot_compute(runs, used, law, out / "sweep.png", SWEEP_PRESET)
    return {"steps": list(budgets), "runs": [{k: r[k] for k in ("hidden_size", "steps", "non_embedding_params", "tokens", "compute",
                                        "val_loss")} for r in runs],
            "fit": {**dataclasses.asdict(law), "law": law.describe(), "points": len(used)}}


def look_stage(run: Path, model, tok, train: list[str], heldout: list[str], seq_len: int = 64,
               device: str = "cpu", sweep_steps: tuple[int, int] | None = (20, 40)) -> dict:
    """Every view on the pretrained `model`, pictures in RUN/look/ (the global random state is
    left as it was, so the stages after this one run as they would without it); the sweep
    trains for `sweep_steps` (None: no sweep)."""
    print(bold("4. look inside") + " — the pretrained model's next tokens, attention, embeddings, "
          "logit lens, an n-gram baseline and scaling in miniature")
    t0 = time.time()
    out = run / "look"
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.random.fork_rng(devices=[]):
        r = {"next": next_token(model, tok), "attention": attention(model, tok, out),
             "embeddings": embeddings(model, tok, out), "lens": lens(model, tok, out),
             "ngram": ngram(model, tok, train, heldout, out)}
        if sweep_steps:
            r["sweep"] = sweep(run, tok, seq_len, device, out, sweep_steps)
    r["seconds"] = round(time.time() - t0, 1)
    for line in findings(r):
        print("   " + line)
    return r


def findings(r: dict) -> list[str]:
    """One measured sentence per picture, keyed as report.md shows them."""
    a, e, le, ng = r["attention"], r["embeddings"], r["lens"], r["ngram"]["models"]
    giver, receiver = NAMES
    layer = a["people"][a["layer"]]
    word = e["picture"]["word"]
    w = e[word]
    last = len(w["same_sense"]) - 1
    lines = {
        "attention": f"In layer {a['layer']} (of 0–{len(a['people']) - 1}), the one that weighs the two names most, "
                     f"「{a['token']}」 gives {receiver} (the receiver) {layer[receiver]:.2f} and {giver} (the giver) "
                     f"{layer[giver]:.2f} of its attention (head mean); its top piece there is "
                     f"{a['top'][a['layer']][0][0]} ({a['top'][a['layer']][0][1]:.2f}).",
        "rollout": f"Through all layers (rollout, the residual counted as half) 「{a['token']}」 draws "
                   f"{a['rollout_people'][receiver]:.2f} on {receiver} and {a['rollout_people'][giver]:.2f} on "
                   f"{giver}; its top input is {a['rollout_top'][0][0]} ({a['rollout_top'][0][1]:.2f}).",
        "pca": f"At the embedding layer every 「{word}」 is one vector (cosine {w['same_sense'][0]:.2f} same sense, "
               f"{w['fruit_phone'][0]:.2f} fruit–phone); at layer {last} same-sense pairs are "
               f"{w['same_sense'][last]:.2f} and fruit–phone pairs {w['fruit_phone'][last]:.2f}.",
        "lens": f"At the last position of {le['prompt']} the top next token is "
                f"{le['last_position'][0][0]!r} ({le['last_position'][0][1]:.2f}) at the embeddings and "
                f"{le['last_position'][-1][0]!r} ({le['last_position'][-1][1]:.2f}) at the last layer, "
                f"the model's answer from layer {le['answer_from_layer']} on.",
        "ngram": "Bits per byte on the same held-out text: "
                 + ", ".join(f"{k} {v['bits_per_byte']:.3f}" for k, v in ng.items()) + ".",
    }
    if "sweep" in r:
        s = r["sweep"]
        best = min(s["runs"], key=lambda x: x["val_loss"])
        lines["sweep"] = (f"{len(s['runs'])} runs from {max(x['val_loss'] for x in s['runs']):.2f} down to "
                          f"{best['val_loss']:.2f} validation loss (width {best['hidden_size']}, "
                          f"{best['steps']} steps); fitted to the {s['fit']['points']} runs no cheaper run "
                          f"beats: {s['fit']['law']}.")
    return [lines[k] for k in lines]


def look_report(r: dict) -> list[str]:
    """report.md's section."""
    said = dict(zip(("attention", "rollout", "pca", "lens", "ngram", "sweep"), findings(r), strict=False))
    n, a, e, ng = r["next"], r["attention"], r["embeddings"], r["ngram"]
    cell = lambda s: s.replace("|", "\\|").replace("\n", "↵")  # noqa: E731
    chain = lambda steps: " → ".join(f"{cell(t)} ({p:.2f})" for t, p in steps)  # noqa: E731
    words = [k for k in WORDS if k in e]
    lines = [
        "## Look inside the pretrained model", "",
        f"No training: `jielong inspect` on the model above, in {r['seconds']:.0f} seconds (pictures in "
        "`look/`). Run them on any model: `jielong inspect next|attention|embeddings|lens`, "
        "`jielong train ngram`, `jielong sweep`.", "",
        f"**The next token (接龍).** After {n['prompt']} the model gives every token a probability; "
        "generation picks one and asks again.", "",
        "| next token | probability |", "| --- | --- |",
        *[f"| {cell(t)} | {p:.1%} |" for t, p in n["top"]], "",
        f"Greedy (the likeliest each time): {chain(n['greedy'])} = {cell(n['prompt'] + n['greedy_text'])}", "",
        f"Sampled (temperature {n['temperature']}, seed 0): {chain(n['sampled'])} = "
        f"{cell(n['prompt'] + n['sampled_text'])}", "",
        f"**Attention** on {a['sentence']} (the notes' 小美把禮物送給小芳 in the world's names), "
        f"layer {a['layer']}, every head:", "",
        f"![attention, layer {a['layer']}](look/layer{a['layer']}.png)", "",
        said["attention"], "",
        "![attention rollout](look/rollout.png)", "",
        said["rollout"], "",
        "**Contextual embeddings**: a word's hidden state (the mean over its tokens) in fruit and "
        "in phone sentences, in the forms the corpus says them (every 20th training document uses "
        f"such words). {words[0]} as a fruit: {' '.join(e[words[0]]['fruit'])} As a phone: "
        f"{' '.join(e[words[0]]['phone'])} Mean cosine similarity of same-sense pairs and of "
        "fruit–phone pairs per layer:", "",
        "| layer | " + " | ".join(f"{w} same sense | {w} fruit–phone" for w in words) + " |",
        "| --- |" + " --- | --- |" * len(words),
        *[f"| {'embeddings' if li == 0 else li} | "
          + " | ".join(f"{e[w]['same_sense'][li]:.3f} | {e[w]['fruit_phone'][li]:.3f}" for w in words) + " |"
          for li in range(len(e[words[0]]["same_sense"]))], "",
        f"![{e['picture']['word']} PCA](look/pca.png)", "",
        said["pca"], "",
        "**Logit lens**: each layer's residual stream through the final norm and the head, as if it "
        "were the last layer (rows: layers; cells: the top next token, coloured by probability).", "",
        "![logit lens](look/lens.png)", "",
        said["lens"], "",
        f"**An n-gram baseline** (Markov's chain of characters): 3-grams with Kneser–Ney smoothing "
        f"counted on the {ng['train_documents']:,} training documents, against the transformer on "
        f"{ng['heldout']['documents']} validation documents ({ng['heldout']['bytes']:,} bytes).", "",
        "| model | bits per byte | sample (temperature 1) |", "| --- | --- | --- |",
        *[f"| {k} | {v['bits_per_byte']:.3f} | {cell(v['sample'])} |" for k, v in ng["models"].items()], "",
        "![bits per byte](look/bits_per_byte.png)", "",
        said["ngram"], "",
    ]
    if "sweep" in r:
        lines += [f"**Scaling in miniature**: the test preset at widths {', '.join(map(str, SWEEP_WIDTHS))} × "
                  f"{' and '.join(map(str, r['sweep']['steps']))} steps on the pretraining data; loss against "
                  "compute (6·N·D), log-log.", "",
                  "![scaling in miniature](look/sweep.png)", "", said["sweep"], ""]
    return lines
