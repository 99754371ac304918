"""`jielong rag eval`: how well retrieval finds the passage a question was written from, how
well a model answers from what it finds, whether its citations point at the passage its
answer came from, and where the "I don't know" threshold should sit.

Run as:
    jielong rag eval ../shared/data/drcd-dev.json --out runs/rag-eval/drcd
    jielong rag eval ../shared/data/drcd-dev.json --convert t2s --out runs/rag-eval/drcd-hans
    jielong rag eval ../shared/data/drcd-dev.json --model runs/demo/assistant --limit 200 --out runs/rag-eval/drcd
    jielong rag eval ../shared/data/drcd-dev.json --embedder runs/embed/model --method hybrid --dense_weight 0.3
    jielong rag eval ../shared/data/drcd-dev.json --reranker runs/rerank/model --rerank_n 20
    jielong rag eval ../shared/data/drcd-dev.json --calibrate ../shared/data/cmrc2018-dev.json --out runs/rag-eval/cal

Retrieval (always). A SQuAD-style set (DRCD, CMRC 2018) is its own benchmark: every
paragraph is a document, and a question's gold document is the paragraph it was asked about
(with any paragraph of the very same text). Without --index the set's paragraphs are indexed
one chunk each (chunks of 4096 tokens, no overlap) in OUT/index (kept, and reused by the
next run: the index build is incremental) or, without --out, a temporary folder. With
--index, a chunk is mapped back to its paragraph by its source "FILE#N" (the file's name and
N); chunks of other files are distractors, and several chunks of one paragraph count once,
at the best rank. Metrics over the top 100 passages (or --k when larger), as TREC's
trec_eval defines them for one query and averaged over the questions:
- recall@k: the share of questions with a gold paragraph among the first k;
- MRR: the mean of 1 / rank of the first gold paragraph (0 when not in the top 100);
- nDCG@k: DCG = Σ rel_i / log2(i + 1) over the first k, binary relevance, divided by the DCG
  of the ideal ranking (Järvelin & Kekäläinen 2002); one gold paragraph: 1 / log2(rank + 1).
--dense_weight weights hybrid's dense list, --reranker reorders each method's top --rerank_n
(jielong.rag.index.Index.search: the same retrieval as `rag search` and `rag ask`).
--convert s2t / t2s converts the questions with OpenCC first: 简 questions against the 繁
DRCD corpus measure the cross-script retrieval that the index's 繁→简 folding is for.

Answers (with --model). The first --limit questions go through `rag.answer.retrieve` (the
coverage gate: no passage covers --min_coverage of the question → "I don't know", no model
asked), the prompt of `jielong rag ask` (`rag_messages`, passages fitted to the context), and
greedy generation continuously batched (`jielong.eval.generation.generate_replies`). The
reply's first line, citation markers taken out, is scored by EM and F1 as CMRC 2018's
script computes them (`jielong.eval.metrics`); a declined question scores 0. Declined: by
the gate, or by the model (its reply says it does not know, `jielong.eval.qa.is_refusal`).
A question whose prompt leaves no room for any passage in the model's context is counted
(`no_room`) and scored 0. A small model's context may not hold a whole paragraph: index the
set in smaller chunks (`jielong rag index SET.json --chunk_tokens 64`) and pass --index.

Faithfulness (with --model): a lexical check, not an entailment (NLI) judge. An answer's
claim is the gold answer when the reply contains it (then the key span is known), else the
reply's first line without its markers. A citation [n] is faithful when passage n supports
the claim: at least FAITHFUL (0.6) of the claim's token bigrams occur in the passage
(tokens: each CJK character, each lower-cased Latin word, both scripts folded to 简 so a 简
answer can cite a 繁 passage; a one-token claim needs its token). A copied span scores 1; a
claim made of the passage's words in another order, or of other words, scores low. It cannot
see a paraphrase or a negation: "不是 X" citing a passage that says X is "faithful". Reported:
the share of citations that are faithful, of cited answers whose claim no cited passage
supports, and of answers with no citation at all.

Calibration (--calibrate OTHER.json). Answerable: the set's questions against its own index
(kept when the gate lets the gold paragraph through among the top --answer_k). Unanswerable,
two kinds: OTHER's questions, converted to the set's script (s2t for a 繁 set, t2s for a 简
one) so that script is not what tells them apart; and the set's own questions with their gold
paragraph taken out of the ranking (on-topic but unanswered: the harder case; BM25's
statistics still include that paragraph, a negligible difference at 1,000 paragraphs).
Declined: no passage passes the gate. For each threshold 0.1..0.9 it reports kept and
declined, and picks the one with the highest mean of kept and declined (balanced accuracy),
averaged over the two unanswerable kinds. OUT/calibration.json holds the table.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from jielong.errors import UserError
from jielong.eval.answers import first_line
from jielong.eval.generation import generate_replies
from jielong.eval.metrics import exact_match, qa_f1, rouge_tokens
from jielong.eval.qa import is_refusal, read_squad
from jielong.eval.replies import contains_answer
from jielong.files import write_json, write_text
from jielong.hub import open_model, stop_ids
from jielong.prep.language import converter
from jielong.rag.answer import (
    MARKER,
    MIN_COVERAGE,
    citations_of,
    coverage,
    fold,
    language,
    retrieve,
)
from jielong.rag.commands import fit_passages
from jielong.rag.embed import load_embedder
from jielong.rag.index import RERANK_N, Hit, Index, build_index
from jielong.rag.rerank import Reranker
from jielong.runtime import pick_device

KS = (1, 5, 20)
DEPTH = 100  # passages ranked per question: MRR counts a gold paragraph past this as 0
FAITHFUL = 0.6
THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
PARAGRAPH_TOKENS = 4096  # one chunk per paragraph (DRCD's longest is 1,036 characters)


@dataclass
class Question:
    id: str
    text: str
    answers: list[str]
    gold: set[tuple[str, int]]  # the (file name, paragraph number) keys of its paragraph


def read_set(path: str | Path) -> list[Question]:
    """The questions of a SQuAD-style file with their gold paragraphs (numbered from 0 over
    the file, as `rag.ingest` numbers its documents "FILE#N")."""
    path = Path(path)
    items = read_squad(path)  # checks the layout: a malformed file is one line, with where
    doc = json.loads(path.read_bytes().decode("utf-8").removeprefix("\ufeff"))
    paragraphs = [p for article in doc["data"] for p in article["paragraphs"]]
    same: dict[str, set[tuple[str, int]]] = {}
    for n, p in enumerate(paragraphs):
        same.setdefault(p["context"], set()).add((path.name, n))
    golds = [same[p["context"]] for p in paragraphs for _ in p["qas"]]
    return [Question(it.id, it.question, it.answers, g) for it, g in zip(items, golds, strict=True)]


def doc_key(source: str) -> tuple[str, int] | str:
    """(file name, paragraph number) of a "FILE#N" source; any other source as it is."""
    file, sep, n = source.rpartition("#")
    return (Path(file).name, int(n)) if sep and n.isdigit() else source


# ----------------------------------------------------------------------------- metrics

def first_rank(ranking: list, relevant: set) -> int | None:
    """1-based rank of the first relevant document, None when none is ranked."""
    return next((i for i, d in enumerate(ranking, 1) if d in relevant), None)


def ndcg(ranking: list, relevant: set, k: int) -> float:
    """nDCG@k with binary relevance (see the module docstring)."""
    dcg = sum(1 / math.log2(i + 1) for i, d in enumerate(ranking[:k], 1) if d in relevant)
    ideal = sum(1 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def retrieval_metrics(rankings: list[list], relevant: list[set], k: int = 20) -> dict:
    """recall@1/5/20 (and @k), MRR and nDCG@k averaged over the queries."""
    if not rankings:
        raise ValueError("no queries to score")
    ranks = [first_rank(r, g) for r, g in zip(rankings, relevant, strict=True)]
    n = len(ranks)
    out = {f"recall@{c}": sum(r is not None and r <= c for r in ranks) / n for c in sorted({*KS, k})}
    out["mrr"] = sum(1 / r for r in ranks if r) / n
    out[f"ndcg@{k}"] = sum(ndcg(r, g, k) for r, g in zip(rankings, relevant, strict=True)) / n
    return out


def ranking(idx: Index, query: str, method: str, depth: int) -> list:
    """The documents (paragraph keys) of the top `depth` passages, best first, each once."""
    return list(dict.fromkeys(doc_key(h.chunk.source) for h in idx.search(query, depth, method)))


# ----------------------------------------------------------------------------- faithfulness

def bigrams(text: str) -> list[tuple[str, ...]]:
    toks = rouge_tokens(fold(text))
    return [tuple(toks)] if len(toks) == 1 else list(zip(toks, toks[1:], strict=False))


def support(claim: str, passage: str) -> float:
    """The share of the claim's token bigrams (see the module docstring) found in the passage."""
    want = bigrams(claim)
    if not want:
        return 0.0
    have = set(bigrams(passage)) | {(t,) for t in rouge_tokens(fold(passage))}
    return sum(b in have for b in want) / len(want)


def answer_text(reply: str) -> str:
    """The reply's first line without its citation markers: what EM and F1 score."""
    return first_line(MARKER.sub("", reply)).strip()


def faithfulness(reply: str, hits: list[Hit], answers: list[str]) -> dict:
    """{"claim", "cited": [n…], "faithful": [n…]} for one reply (see the module docstring)."""
    claim = next((a for a in answers if a.strip() and contains_answer(reply, a)), None) or answer_text(reply)
    cited = [c["n"] for c in citations_of(reply, hits)]
    return {"claim": claim, "cited": cited,
            "faithful": [n for n in cited if support(claim, hits[n - 1].chunk.text) >= FAITHFUL]}


# ----------------------------------------------------------------------------- the parts

def evaluate_retrieval(idx: Index, questions: list[Question], method: str = "bm25", k: int = 20,
                       convert: str | None = None, progress: bool = True) -> dict:
    depth = max(DEPTH, k)
    conv = converter(convert) if convert else None
    t0 = time.perf_counter()
    rankings = [ranking(idx, conv.convert(q.text) if conv else q.text, method, depth)
                for q in tqdm(questions, desc="retrieval", unit=" q", disable=not progress)]
    took = time.perf_counter() - t0
    out = retrieval_metrics(rankings, [q.gold for q in questions], k)
    return {**out, "questions": len(questions), "method": method, "convert": convert,
            "depth": depth, "query_ms": 1000 * took / len(questions)}


def evaluate_answers(idx: Index, questions: list[Question], model: str, method: str = "bm25",
                     k: int = 4, min_coverage: float = MIN_COVERAGE, max_new_tokens: int = 64,
                     device: str = "auto", slots: int = 16) -> tuple[dict, list[dict]]:
    """(summary, one row per question): EM, F1, declines and faithfulness of a model's answers."""
    net, tok, gen = open_model(model, device=pick_device(device))
    room = net.config.max_position_embeddings - max_new_tokens
    rows, given, prompts = [], [], []
    for q in tqdm(questions, desc="retrieving", unit=" q"):
        hits = retrieve(idx, q.text, k, method, min_coverage)
        row = {"id": q.id, "question": q.text, "answers": q.answers, "declined": not hits}
        if hits:
            try:
                hits, text = fit_passages(tok, q.text, hits, None, room)
            except UserError:  # not even the start of a passage fits: counted, not answered
                row.update(declined=True, no_room=True)
                rows.append(row)
                continue
            row["passages"] = [h.chunk.source for h in hits]
            row["gold_given"] = any(doc_key(h.chunk.source) in q.gold for h in hits)
            given.append((row, hits))
            prompts.append(tok.encode(text))
        rows.append(row)
    replies, counts = (generate_replies(net, tok, prompts, max_new_tokens, stop_ids(tok, gen, net.config.eos_token_id),
                                        [], slots, "answering") if prompts else ([], {}))
    for (row, hits), reply in zip(given, replies, strict=True):
        row.update(reply=reply, refused=is_refusal(reply), **faithfulness(reply, hits, row["answers"]))
    for row in rows:
        pred = "" if row["declined"] else answer_text(row["reply"])
        row.update(prediction=pred, em=exact_match(pred, row["answers"]), f1=qa_f1(pred, row["answers"]))
    n = len(rows)
    answered = [r for r in rows if not r["declined"]]
    cited = [r for r in answered if r["cited"]]
    citations = sum(len(r["cited"]) for r in cited)
    summary = {
        "questions": n, "model": model, "k": k, "min_coverage": min_coverage,
        "em": 100 * sum(r["em"] for r in rows) / n, "f1": 100 * sum(r["f1"] for r in rows) / n,
        "declined_by_gate": sum(r["declined"] and not r.get("no_room") for r in rows) / n,
        "no_room": sum(bool(r.get("no_room")) for r in rows),
        "declined_by_model": sum(r["refused"] for r in answered) / n,
        "gold_passage_given": sum(r["gold_given"] for r in answered) / n,
        "answers_citing": len(cited) / max(1, len(answered)),
        "citations_faithful": sum(len(r["faithful"]) for r in cited) / citations if citations else None,
        "cited_answers_unsupported": sum(not r["faithful"] for r in cited) / len(cited) if cited else None,
        "faithful_threshold": FAITHFUL, **counts}
    summary["decline_rate"] = summary["declined_by_gate"] + summary["declined_by_model"]
    return summary, rows


def gate_outcomes(idx: Index, queries: list[tuple[str, set]], excluded: list[set] | None,
                  k: int, method: str, desc: str) -> list[list[tuple[float, bool]]]:
    """For each (query, gold keys): its top-k passages' (coverage, is gold), passages of the
    `excluded` keys taken out of the ranking first."""
    out = []
    for i, (q, gold) in enumerate(tqdm(queries, desc=desc, unit=" q")):
        drop = excluded[i] if excluded else set()
        hits = [h for h in idx.search(q, k + 8, method) if doc_key(h.chunk.source) not in drop][:k]
        out.append([(coverage(idx, q, h), doc_key(h.chunk.source) in gold) for h in hits])
    return out


def calibrate_gate(idx: Index, questions: list[Question], other: list[Question], k: int = 4,
              method: str = "bm25") -> dict:
    """The gate's trade-off over THRESHOLDS and the pick (see the module docstring)."""
    script = language("".join(q.text for q in questions[:50]))
    conv = converter("s2t" if script == "zh-hant" else "t2s")
    answerable = gate_outcomes(idx, [(q.text, q.gold) for q in questions], None, k, method, "answerable")
    foreign = gate_outcomes(idx, [(conv.convert(q.text), set()) for q in other], None, k, method,
                            "other set's questions")
    removed = gate_outcomes(idx, [(q.text, set()) for q in questions], [q.gold for q in questions], k,
                            method, "gold paragraph removed")

    def share(outcomes, test, t: float) -> float:
        return sum(test(hs, t) for hs in outcomes) / len(outcomes)

    def kept(hs, t):  # the gold paragraph passes the gate
        return any(c >= t and g for c, g in hs)

    def answered(hs, t):  # some passage passes
        return any(c >= t for c, _ in hs)

    def declined(hs, t):
        return not answered(hs, t)

    rows = []
    for t in THRESHOLDS:
        k_share = share(answerable, kept, t)
        d = [share(o, declined, t) for o in (foreign, removed)]
        rows.append({"threshold": t, "answerable_kept": k_share,
                     "answerable_answered": share(answerable, answered, t),
                     "other_set_declined": d[0], "gold_removed_declined": d[1],
                     "balanced": (k_share + sum(d) / 2) / 2})
    best = max(rows, key=lambda r: (r["balanced"], -r["threshold"]))
    return {"k": k, "method": method, "answerable": len(questions), "other_set": len(other),
            "other_converted": "s2t" if script == "zh-hant" else "t2s", "rows": rows,
            "pick": best["threshold"], "current": MIN_COVERAGE}


# ----------------------------------------------------------------------------- the command

def eval_cmd(dataset: str, index: str | None = None, model: str | None = None, k: int = 20,
             method: Literal["bm25", "dense", "hybrid"] = "bm25",
             tokenizer: Literal["jieba", "bigram", "whitespace"] = "jieba", embedder: str | None = None,
             dense_weight: float = 1.0, reranker: str | None = None, rerank_n: int = RERANK_N,
             convert: Literal["s2t", "t2s"] | None = None, limit: int | None = None,
             calibrate: str | None = None, answer_k: int = 4, min_coverage: float = MIN_COVERAGE,
             max_new_tokens: int = 64, out: str | None = None, device: str = "auto") -> dict:
    """Score retrieval (recall@k, MRR, nDCG), and with --model the answers, on a SQuAD-style set.

    Args:
        dataset: a SQuAD-style JSON file (DRCD, CMRC 2018): every paragraph a document, each
            question's gold document its own paragraph
        index: an index holding the set's paragraphs (`jielong rag index SET.json`); default:
            one is built in OUT/index (or a temporary folder), a paragraph per chunk
        model: a chat model to answer the questions (EM, F1, declines, faithfulness)
        k: the cut-off of nDCG@k (recall is reported at 1, 5, 20 and k)
        method: bm25, dense (needs --embedder) or hybrid (reciprocal rank fusion)
        tokenizer: BM25 words of the index built here: jieba, bigram or whitespace
        embedder: an embedder folder (BERT / XLM-R, one `jielong train embed` wrote, or a causal LM) for
            dense and hybrid
        dense_weight: hybrid: the dense list's weight in the fusion, BM25's being 1 (1: plain RRF)
        reranker: a cross-encoder reranker folder (`jielong train rerank`): reorders the
            first --rerank_n passages of the method
        rerank_n: passages the reranker reads again
        convert: convert the questions with OpenCC first (for every part): s2t (简→繁) or
            t2s (繁→简)
        limit: answer only the first N questions (retrieval scores all)
        calibrate: another SQuAD-style set whose questions are unanswerable here: report
            the decline threshold's trade-off and pick one
        answer_k: passages retrieved for an answer (and for calibration)
        min_coverage: the coverage gate of the answers (`jielong rag ask --min_coverage`)
        max_new_tokens: most tokens of an answer
        out: a folder for retrieval.json, answers.json, answers.jsonl, calibration.json and
            the index built here
        device: auto, cpu, cuda, mps
    """
    if k < 1:
        raise UserError(f"--k {k}: need at least 1")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: need at least 1 question")
    questions = read_set(dataset)
    other = read_set(calibrate) if calibrate else None
    emb = load_embedder(embedder) if embedder else None
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jielong-rag-eval-") as tmp:
        if index is None:
            where = Path(out) / "index" if out else Path(tmp) / "index"
            build_index([dataset], where, embedder=emb, chunk_tokens=PARAGRAPH_TOKENS, overlap=0,
                        tokenizer=tokenizer)
            index = str(where)
        idx = Index.load(index, embedder=emb, reranker=Reranker.load(reranker) if reranker else None,
                         rerank_n=rerank_n, dense_weight=dense_weight)
        if not any(isinstance(doc_key(c.source), tuple) and doc_key(c.source)[0] == Path(dataset).name
                   for c in idx.chunks):
            raise UserError(f"{index}: no passage of {Path(dataset).name} in this index; build it with "
                            f"`jielong rag index {dataset} --out {index}` or leave --index out")
        result = {"retrieval": {"set": str(dataset), "index": None if index.startswith(tmp) else index,
                                "tokenizer": idx.manifest.get("tokenizer", {}).get("kind"),
                                "dense_weight": dense_weight if method == "hybrid" else None,
                                "reranker": reranker, "rerank_n": rerank_n if reranker else None,
                                **evaluate_retrieval(idx, questions, method, k, convert)}}
        r = result["retrieval"]
        print(f"{Path(dataset).name}: {r['questions']} questions, {method}"
              + (f" (dense weight {dense_weight:g})" if method == "hybrid" and dense_weight != 1 else "")
              + (f", top {rerank_n} reranked" if reranker else "")
              + (f", questions {convert}" if convert else "") + "  "
              + "  ".join(f"{name} {v:.3f}" for name, v in r.items() if "@" in name or name == "mrr"))
        if out:
            write_json(Path(out) / "retrieval.json", r)
        if convert:  # the answers and the calibration ask the converted questions too
            questions = [replace(q, text=converter(convert).convert(q.text)) for q in questions]
        if model:
            summary, rows = evaluate_answers(idx, questions[:limit], model, method, answer_k, min_coverage,
                                             max_new_tokens, device)
            result["answers"] = summary
            print(f"answers ({summary['questions']}): EM {summary['em']:.1f}  F1 {summary['f1']:.1f}  "
                  f"declined {summary['decline_rate']:.1%}  "
                  f"faithful citations {fmt(summary['citations_faithful'])}  "
                  f"cited answers unsupported {fmt(summary['cited_answers_unsupported'])}")
            if out:
                write_json(Path(out) / "answers.json", summary)
                write_text(Path(out) / "answers.jsonl",
                           "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        if other is not None:
            cal = calibrate_gate(idx, questions, other, answer_k, method)
            result["calibration"] = cal
            print("threshold  kept  other-set declined  gold-removed declined  balanced")
            for row in cal["rows"]:
                print(f"  {row['threshold']:.1f}     {row['answerable_kept']:.3f}  {row['other_set_declined']:.3f}"
                      f"               {row['gold_removed_declined']:.3f}                  {row['balanced']:.3f}")
            print(f"pick: {cal['pick']} (highest balanced accuracy; the gate now uses {MIN_COVERAGE})")
            if out:
                write_json(Path(out) / "calibration.json", cal)
    return result


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"
