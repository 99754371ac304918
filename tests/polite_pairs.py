"""A planted preference for the reward-model tests: a polite request (please / 請 / 请)
beats a curt one, in English, Traditional and Simplified Chinese; its tokenizer, a tiny
reward model, and one trained on it."""

import json
import random

import torch
from conftest import write_jsonl

from jielong.checkpoint import save_model
from jielong.classifier import Classifier
from jielong.config import preset
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.loop import TrainConfig
from jielong.train.reward import reward

EN = ["close the door", "send me the report", "call me back", "open the window", "wait a moment",
      "sit down", "turn off the light", "pass the salt", "check the oven", "feed the cat"]
HANT = ["關上門", "把報告寄給我", "回電話給我", "打開窗戶", "等一下", "坐下", "關燈", "把鹽遞給我",
        "看看烤箱", "餵貓"]
HANS = ["关上门", "把报告寄给我", "回电话给我", "打开窗户", "等一下", "坐下", "关灯", "把盐递给我",
        "看看烤箱", "喂猫"]


def polite_pairs(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for x in EN:
        for ask in (f"Ask me to {x}.", f"Tell me to {x}."):
            rows.append({"prompt": ask,
                         "chosen": rng.choice([f"Please {x}.", f"Could you please {x}?",
                                               f"{x.capitalize()}, please."]),
                         "rejected": rng.choice([f"Now {x}!", f"Just {x}.", f"{x.capitalize()}, now."])})
    for things, asks, polite, curt in (
            (HANT, ["叫我{x}。", "要我{x}。"], ["請{x}。", "請你{x}，謝謝。"], ["快{x}！", "馬上{x}。", "{x}！"]),
            (HANS, ["叫我{x}。", "让我{x}。"], ["请{x}。", "请你{x}，谢谢。"], ["快{x}！", "马上{x}。", "{x}！"])):
        for x in things:
            for ask in asks:
                rows.append({"prompt": [{"role": "user", "content": ask.format(x=x)}],
                             "chosen": rng.choice(polite).format(x=x),
                             "rejected": rng.choice(curt).format(x=x)})
    rng.shuffle(rows)
    return rows


def polite_tokenizer():
    texts = [f"{r['chosen']} {r['rejected']} {json.dumps(r['prompt'], ensure_ascii=False)}"
             for r in polite_pairs()]
    return train_tokenizer(texts * 3, vocab_size=300)


def tiny_reward_model(tok, model_type: str = "llama") -> Classifier:
    cfg = preset("test", vocab_size=tok.vocab_size, model_type=model_type,
                 eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    rm = Classifier(cfg, ["reward"])
    with torch.no_grad():  # weights far from their init, norms and biases included
        for p in rm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rm.eval()


def train_polite_reward(d, tok) -> dict:
    """A tiny reward model trained on the polite-request preference in directory `d`: (run dir,
    summary, data)."""
    cfg = preset("test", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    base = save_model(d / "base", Transformer(cfg), tok)
    data = write_jsonl(d / "polite.jsonl", polite_pairs())
    train = TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=4, eval_every=10, save_every=10,
                        device="cpu", seed=0)
    summary = reward([str(data)], model=str(base), out=str(d / "run"), val_fraction=0.25, train=train)
    return {"dir": d, "base": base, "data": data, "run": d / "run", "train": train, "summary": summary}
