"""Shared bits for the side-by-side benchmarks: a model pair with identical weights."""

from __future__ import annotations

import platform
import statistics
import time

import torch

from jielong.config import ModelConfig
from jielong.model import Transformer


def model_pair(cfg: ModelConfig, seed: int = 0):
    """(ours, transformers') with the same random weights, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    ours = Transformer(cfg)
    hf_cfg = {k: v for k, v in cfg.to_hf().items() if k not in ("architectures", "model_type")}
    conf = AutoConfig.for_model(cfg.model_type, **hf_cfg)
    theirs = AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def machine() -> str:
    return (f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
            + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", CPU"))


median = statistics.median
