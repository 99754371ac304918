"""`jielong rag index`, `jielong rag search` and `jielong rag ask`: build an index of your
documents, look into it (retrieval alone, to see what a question would be answered from),
and answer from it with citations.

Run as:
    jielong rag index docs/ notes.md --out runs/index
    jielong rag search "退貨要幾天" --index runs/index --k 5
    jielong rag search "退貨要幾天" --index runs/index --reranker runs/rerank/model --rerank_n 20
    jielong rag ask "退貨要幾天？" --index runs/index --model runs/demo/assistant

`rag index` reads txt, Markdown, HTML, PDF, JSONL (--field) and SQuAD-style JSON
(jielong.rag.ingest), cuts them into chunks of --chunk_tokens with --overlap (chunk.py),
and builds BM25 (sparse.py) and, with --embedder, dense vectors (index.py). Run it again
over the same PATHs after editing: only the changed files are read again. A file it cannot
read is skipped and listed with its reason; the rest are indexed.

`rag search` prints the ranked passages with their source file, page, heading and score.
--embedder is a Hugging Face BERT / XLM-R folder (jielong.encoder; its pooling is the one its
sentence-transformers files declare), one `jielong train embed` wrote, or a causal LM (its
mean-pooled states): jielong.rag.embed.load_embedder. The index remembers it: a query
embedded by another model is refused. --method hybrid fuses BM25's and the dense ranking by
reciprocal rank fusion, the dense list weighted by --dense_weight (1: plain RRF). --reranker
(a `jielong train rerank` folder or a bge-reranker one: jielong.rag.rerank) reads the top
--rerank_n passages again with the query and reorders them (jielong.rag.index.Index.search).

`rag ask` retrieves, keeps the passages that cover enough of the question (or answers "I
don't know" without asking the model), and asks the model with the passages as numbered,
quoted data (jielong.rag.answer); it prints the answer and the sources its [n] markers cite.
"""

from __future__ import annotations

import sys
from typing import Literal

from jielong.hub import open_model, stop_ids
from jielong.infer.chat import need_demo
from jielong.infer.generate import generate_text
from jielong.infer.sampling import SamplingParams
from jielong.rag import answer as rag_answer
from jielong.rag.answer import MIN_COVERAGE, citations_of, decline_text, retrieve, where
from jielong.rag.chunk import OVERLAP, SIZE
from jielong.rag.embed import load_embedder
from jielong.rag.index import RERANK_N, Hit, Index, build_index
from jielong.rag.rerank import Reranker
from jielong.runtime import pick_device
from jielong.tokenizer import use_color


def index_cmd(paths: list[str], out: str = "runs/rag-index", chunk_tokens: int = SIZE, overlap: int = OVERLAP,
              field: str = "text", tokenizer: Literal["jieba", "bigram", "whitespace"] = "jieba",
              embedder: str | None = None):
    """Index documents (txt, md, html, pdf, jsonl, SQuAD json; folders recursively) for retrieval.

    Args:
        paths: files and folders to index; the index holds what is under them now (files gone
            since the last run are removed, unchanged files are not read again)
        out: the index folder
        chunk_tokens: tokens per chunk (a CJK character or a word is one token)
        overlap: tokens of whole sentences repeated at the start of the next chunk
        field: the text field of a JSONL file's rows
        tokenizer: BM25 words: jieba (Chinese words, 繁→简 folded), bigram (Chinese character
            pairs), whitespace (str.split: the common bug, Chinese scores 0)
        embedder: an encoder folder (Hugging Face BERT / XLM-R) for dense vectors
    """
    emb = load_embedder(embedder) if embedder else None
    report = build_index(paths, out, embedder=emb, chunk_tokens=chunk_tokens, overlap=overlap,
                         field=field, tokenizer=tokenizer)
    print(f"{len(report.indexed)} files indexed, {len(report.unchanged)} unchanged, "
          f"{len(report.removed)} removed, {len(report.skipped)} skipped; {report.chunks} chunks"
          + (f" ({report.embedded} embedded)" if emb else "") + f" in {out}")
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    return report


def open_index(index: str, embedder: str | None = None, reranker: str | None = None,
               rerank_n: int = RERANK_N, dense_weight: float = 1.0, device: str = "cpu") -> Index:
    """The index folder loaded for search with the embedder and reranker folders given."""
    return Index.load(index, embedder=load_embedder(embedder) if embedder else None,
                      reranker=Reranker.load(reranker, device=device) if reranker else None,
                      rerank_n=rerank_n, dense_weight=dense_weight)


def search_cmd(query: str, index: str = "runs/rag-index", k: int = 5,
               method: Literal["bm25", "dense", "hybrid"] = "bm25", embedder: str | None = None,
               dense_weight: float = 1.0, reranker: str | None = None, rerank_n: int = RERANK_N):
    """The passages of an index that best match a query, with source, page, heading and score.

    Args:
        query: the question or words to look for
        index: the index folder (`jielong rag index … --out INDEX`)
        k: how many passages
        method: bm25, dense (needs --embedder) or hybrid (reciprocal rank fusion of the two)
        embedder: the encoder folder the index was built with (for dense and hybrid)
        dense_weight: hybrid: the dense list's weight in the fusion, BM25's being 1 (1: plain RRF)
        reranker: a cross-encoder reranker folder (`jielong train rerank`, bge-reranker):
            reorders the first --rerank_n passages
        rerank_n: passages the reranker reads again
    """
    idx = open_index(index, embedder, reranker, rerank_n, dense_weight)
    hits = idx.search(query, k=k, method=method)
    if not hits:
        print("no passage shares a word with the query")
    color = use_color(sys.stdout)
    for h in hits:
        print(format_hit(h, color))
    return hits


def fit_passages(tok, question: str, hits: list[Hit], system: str | None,
                 room: int) -> tuple[list[Hit], str]:
    """(the passages that fit, the rendered prompt): jielong.rag.answer.fit_passages,
    measured in the chat template's tokens."""
    def render(messages: list[dict]) -> str:
        return tok.render_chat(messages, add_generation_prompt=True)[0]

    hits, messages = rag_answer.fit_passages(lambda m: len(tok.encode(render(m))), question,
                                             hits, room, system)
    return hits, render(messages)


def format_hit(h: Hit, color: bool = False) -> str:
    c = h.chunk
    paint = (lambda code, s: f"\033[{code}m{s}\033[0m") if color else (lambda code, s: s)
    where = [paint("36", c.source)]
    if c.page is not None:
        where.append(f"p. {c.page}")
    if c.heading:
        where.append(paint("33", c.heading))
    head = f"{paint('1', f'[{h.rank}]')} {'  '.join(where)}  {paint('2', f'{h.method} {h.score:.4g}')}"
    body = " ".join(c.text.split())  # one line; the terminal wraps it (CJK is two columns wide)
    return f"{head}\n    {body[:300] + ' …' if len(body) > 300 else body}"


def ask_cmd(question: str, index: str = "runs/rag-index", model: str = "runs/demo/assistant",
            k: int = 4, method: Literal["bm25", "dense", "hybrid"] = "bm25",
            min_coverage: float = MIN_COVERAGE, embedder: str | None = None,
            dense_weight: float = 1.0, reranker: str | None = None, rerank_n: int = RERANK_N,
            system_prompt: str | None = None, max_new_tokens: int = 256,
            device: str = "auto") -> dict:
    """Answer a question from an index of your documents, citing the passages used.

    Args:
        question: the question
        index: the index folder (`jielong rag index … --out INDEX`)
        model: the chat model that answers (a model folder or a hub id)
        k: passages retrieved
        method: bm25, dense (needs --embedder) or hybrid
        min_coverage: the share of the question's words a passage must have to count as
            relevant (0-1); with none relevant the answer is "I don't know"
        embedder: the encoder folder the index was built with (for dense and hybrid)
        dense_weight: hybrid: the dense list's weight in the fusion, BM25's being 1 (1: plain RRF)
        reranker: a cross-encoder reranker folder: reorders the first --rerank_n passages
        rerank_n: passages the reranker reads again
        system_prompt: a system message to put first
        max_new_tokens: most tokens of the answer
        device: auto, cpu, cuda, mps
    """
    idx = open_index(index, embedder, reranker, rerank_n, dense_weight)
    hits = retrieve(idx, question, k, method, min_coverage)
    if not hits:
        answer = decline_text(question)
        print(answer)
        return {"answer": answer, "citations": [], "declined": True, "passages": []}
    need_demo(model)
    net, tok, gen = open_model(model, device=pick_device(device))
    hits, text = fit_passages(tok, question, hits, system_prompt,
                              net.config.max_position_embeddings - max_new_tokens)
    answer = generate_text(net, tok, [text], SamplingParams(max_tokens=max_new_tokens, temperature=0),
                           stop_ids=stop_ids(tok, gen, net.config.eos_token_id))[0].strip()
    cited = citations_of(answer, hits)
    print(answer)
    color = use_color(sys.stdout)
    print("\nsources:" if cited else "\nsources given (none cited):")
    for n, h in enumerate(hits, 1):
        if not cited or any(c["n"] == n for c in cited):
            print(f"  [{n}] {where(h)}" + (f"  {h.score:.3g}" if color else ""))
    return {"answer": answer, "citations": cited, "declined": False,
            "passages": [h.chunk.id for h in hits]}
