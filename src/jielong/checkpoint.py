"""Checkpoints are Hugging Face model directories, written atomically.

    DIR/config.json               ModelConfig.to_hf()
    DIR/model.safetensors         the state dict (or model-0000i-of-0000n.safetensors + index)
    DIR/generation_config.json    eos/pad ids and default sampling settings
    DIR/tokenizer.json, tokenizer_config.json   when a tokenizer is given
    DIR/trainer_state.pt          training checkpoints only: optimizer, step, RNG

A directory is first written under a temporary name beside its target and renamed into
place only when complete, so a run killed mid-save never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from jielong.config import ModelConfig
from jielong.errors import UserError
from jielong.files import write_json
from jielong.model import Transformer, rope_tables

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TRAINER_STATE = "trainer_state.pt"


def _weights_to_save(model: Transformer) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # shared with embed_tokens; HF omits it too
    return sd


def _save_weights(sd: dict[str, torch.Tensor], d: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    if len(shards) == 1:
        save_file(shards[0], d / WEIGHTS, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, d / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in sd.values())
    write_json(d / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})


def save_model(
    out_dir: str | Path,
    model: Transformer,
    tokenizer=None,
    trainer_state: dict | None = None,
    generation: dict | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write `model` (and optionally tokenizer / trainer state) as an HF directory, atomically."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cfg = model.config
    cfg.save(tmp / "config.json")
    _save_weights(_weights_to_save(model), tmp, max_shard_bytes)
    gen = {"eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
           "bos_token_id": cfg.bos_token_id, **(generation or {})}
    write_json(tmp / "generation_config.json", gen)
    if tokenizer is not None:
        tokenizer.config["model_max_length"] = cfg.max_position_embeddings
        tokenizer.save(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    # Swap in: the old directory (if any) is renamed aside first, and removed only once the
    # new one is in place.
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _weight_files(d: Path) -> list[Path]:
    if (d / INDEX).exists():
        index = json.loads((d / INDEX).read_text(encoding="utf-8"))
        return [d / f for f in sorted(set(index["weight_map"].values()))]
    if (d / WEIGHTS).exists():
        return [d / WEIGHTS]
    return []


def check_model_dir(path: str | Path) -> Path:
    d = Path(path)
    if not d.is_dir():
        raise UserError(f"{d}: no such model directory; pass a folder written by `jielong pretrain` "
                        "or a Hugging Face model directory")
    if not (d / "config.json").exists():
        raise UserError(f"{d}: not a model directory (no config.json); pass a folder written by "
                        "`jielong pretrain` or a Hugging Face model directory")
    if not _weight_files(d):
        raise UserError(f"{d}: has no model.safetensors (or sharded safetensors with an index); "
                        "jielong loads safetensors weights only")
    return d


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> Transformer:
    """Build the model from `config.json` and fill it shard by shard from safetensors."""
    d = check_model_dir(path)
    cfg = ModelConfig.load(d / "config.json")
    with torch.device("meta"):
        model = Transformer(cfg)
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(d):
        with safe_open(str(f), framework="pt", device=str(device)) as sf:
            for k in sf.keys():
                if k not in params:
                    raise UserError(f"{f}: unexpected tensor {k!r} for a {cfg.model_type} model "
                                    "with this config.json")
                state[k] = sf.get_tensor(k).to(dtype)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing = set(params) - set(state) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    if missing:
        raise UserError(f"{d}: weights are missing {len(missing)} tensors, e.g. {sorted(missing)[0]!r}")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    cos, sin = rope_tables(cfg, device=device)
    model.rope_cos, model.rope_sin = cos, sin
    return model


def load_trainer_state(path: str | Path) -> dict:
    # weights_only: a checkpoint is data, never code.
    return torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete training checkpoints under RUN/checkpoints, oldest first."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("step-*") if (p / TRAINER_STATE).exists())
