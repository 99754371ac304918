"""The next-token view (接龍): a model is a function from a text to a probability for every
token that could come next; generation chains it, one token at a time.

Run as:
    jielong inspect next "小美把禮物送給" --model runs/demo/model --k 10 --steps 8 --temperature 0.8

Shows the k likeliest next tokens with their probabilities (the softmax of the model's last
logits, nothing else), then `steps` tokens chosen two ways from the same prompt: greedy (the
likeliest every time: deterministic, and prone to loops) and sampling (a draw from the
distribution after temperature and top-p, through the same `sample` the chat and server use:
it varies with the seed). Each step lists the chosen token, its probability and the runners-up.
Tokens are shown merged into whole characters where byte pieces split one (jielong.inspect.pieces).
"""

from __future__ import annotations

import torch

from jielong.errors import UserError
from jielong.hub import open_model
from jielong.infer.sampling import SamplingParams, sample
from jielong.inspect.pieces import merged_pieces, token_text
from jielong.tokenizer import use_color

_SHOWN_ALTERNATIVES = 3


def top_next(model, ids: list[int], k: int) -> tuple[torch.Tensor, list[tuple[int, float]]]:
    """(the full next-token distribution (V,), its k likeliest [(id, probability)])."""
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=model.lm_head.weight.device), last_only=True)
    probs = logits[0, -1].float().softmax(-1)
    p, i = probs.topk(min(k, probs.numel()))
    return probs, list(zip(i.tolist(), p.tolist(), strict=True))


def alternatives(model, tok, ids: list[int], k: int, most: int = 4) -> list[dict]:
    """The k likeliest next tokens [{"id", "text", "prob", "whole"}], each shown as whole
    characters: a token that is only the first bytes of a character is followed greedily
    (the model's own likeliest next tokens, at most `most` more) until its bytes decode, so
    「韶」 split in two shows as 韶 with its first token's probability; one that never
    completes keeps its hex (token_text) and "whole" false (a web panel cannot continue a
    text from half a character)."""
    _, top = top_next(model, ids, k)
    out = []
    for token, p in top:
        seq, raw = [token], tok.token_bytes(token)
        while not _decodes(raw) and len(seq) <= most and len(ids) + len(seq) < model.config.max_position_embeddings:
            nxt = top_next(model, ids + seq, 1)[1][0][0]
            seq.append(nxt)
            raw += tok.token_bytes(nxt)
        whole = _decodes(raw)
        out.append({"id": token, "text": raw.decode("utf-8") if whole else token_text(tok, token),
                    "prob": p, "whole": whole})
    return out


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def chain(model, tok, ids: list[int], steps: int, params: SamplingParams,
          gen: torch.Generator | None = None) -> list[dict]:
    """`steps` tokens chosen one at a time by `params` (temperature 0: greedy); each step
    {"id", "text", "prob" (under the model's plain softmax), "alternatives": [(text, prob)]}.
    The whole prompt is run again at each step: slow, but the clearest thing to read."""
    ids, out = list(ids), []
    limit = model.config.max_position_embeddings
    for _ in range(steps):
        if len(ids) >= limit:
            break
        probs, top = top_next(model, ids, _SHOWN_ALTERNATIVES + 1)
        chosen = int(sample(probs.log()[None], params, gen=gen)[0])
        out.append({"id": chosen, "text": token_text(tok, chosen), "prob": float(probs[chosen]),
                    "alternatives": [(token_text(tok, i), p) for i, p in top if i != chosen][:_SHOWN_ALTERNATIVES]})
        ids.append(chosen)
        if chosen in tok.end_ids:
            break
    return out


def next_view(model, tok, prompt: str, k: int = 10, steps: int = 0, temperature: float = 1.0,
              top_p: float = 1.0, seed: int = 0) -> dict:
    """{"prompt", "pieces" (the prompt merged into whole characters), "top": [{"id", "text",
    "prob"}], "greedy": steps, "sampled": steps, "greedy_text", "sampled_text"}."""
    params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
    params.validate()
    if k < 1:
        raise UserError(f"--k {k}: show at least one token; try --k 10")
    ids = tok.encode(prompt)
    if not ids:
        raise UserError("the prompt is empty; give a text to continue, e.g. \"小美把禮物送給\"")
    _, top = top_next(model, ids, k)
    greedy = chain(model, tok, ids, steps, SamplingParams(temperature=0))
    sampled = chain(model, tok, ids, steps, params, torch.Generator(device=model.lm_head.weight.device).manual_seed(seed))
    return {
        "prompt": prompt,
        "pieces": [text for text, _ in merged_pieces(tok, ids)],
        "top": [{"id": i, "text": token_text(tok, i), "prob": p} for i, p in top],
        "greedy": greedy, "sampled": sampled,
        "greedy_text": _joined(tok, [s["id"] for s in greedy]),
        "sampled_text": _joined(tok, [s["id"] for s in sampled]),
        "temperature": temperature, "top_p": top_p, "seed": seed,
    }


def _joined(tok, ids: list[int]) -> str:
    return "".join(text for text, _ in merged_pieces(tok, ids))


def _shown(text: str) -> str:
    return text.replace("\n", "↵").replace("\t", "→")


def render(view: dict, color: bool) -> str:
    """The view as a terminal table: a bar per top token, then the two chains side by side."""
    def paint(s: str, code: str) -> str:
        return f"\x1b[{code}m{s}\x1b[0m" if color else s

    lines = [paint("prompt: ", "1") + " | ".join(_shown(p) for p in view["pieces"]), "",
             paint(f"next token, top {len(view['top'])}:", "1")]
    for n, t in enumerate(view["top"], 1):
        bar = "█" * max(1, round(t["prob"] * 30))
        lines.append(f"  {n:>2}  {_shown(t['text'])!s:<12} {t['prob']:7.2%}  {paint(bar, '32' if n == 1 else '36')}")
    for name, key in (("greedy", "greedy"), (f"sampled (temperature {view['temperature']}, top_p "
                                              f"{view['top_p']}, seed {view['seed']})", "sampled")):
        if not view[key]:
            continue
        lines += ["", paint(f"{name}:", "1")]
        for n, s in enumerate(view[key], 1):
            alts = "  ".join(f"{_shown(a)} {p:.1%}" for a, p in s["alternatives"])
            lines.append(f"  {n:>2}  {paint(_shown(s['text']), '1;33')!s:<12} {s['prob']:7.2%}   "
                         + paint(f"instead: {alts}", "2"))
        lines.append("  → " + _shown(view[f"{key}_text"]))
    return "\n".join(lines)


def next_cmd(prompt: str, model: str = "runs/demo/model", k: int = 10, steps: int = 8,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """Show the k likeliest next tokens for a prompt, and how greedy and sampling continue it.

    Args:
        prompt: The text to continue.
        model: A model folder or hub id.
        k: How many of the likeliest next tokens to list.
        steps: How many tokens greedy and sampling each choose (0: only the next-token list).
        temperature: Sampling temperature (0: greedy).
        top_p: Sample only from the smallest set of tokens whose probabilities reach this.
        seed: Seed for the sampled chain.
    """
    if steps < 0:
        raise UserError(f"--steps {steps}: must be 0 or more")
    m, tok, _ = open_model(model)
    view = next_view(m, tok, prompt, k=k, steps=steps, temperature=temperature, top_p=top_p, seed=seed)
    print(render(view, use_color()))
    return view
