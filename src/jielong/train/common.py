"""What the fine-tuning stages share: held-out splits (random, or by prompt for preference
data), the model with or without LoRA adapters, LoRA checkpoints for the loop, the parameter
summary, the result directory, and the start and finish that DPO and KTO have in common.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from jielong.adapter_files import WEIGHTS_FILE, lora_state_dict, save_adapter
from jielong.checkpoint import TRAINER_STATE, list_checkpoints, save_model
from jielong.errors import UserError
from jielong.files import atomic_path
from jielong.hub import open_model
from jielong.lora import LoraConfig, add_adapter
from jielong.plots import loss_curve
from jielong.runtime import init_distributed, is_main_process, pick_device
from jielong.train.loop import TrainConfig, context_length

PREFERENCE_LORA_LR = 1e-5  # DPO's and KTO's with --method lora, unless --lr is given (10×, as SFT's)


def split(examples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded `val_fraction` of the examples (at least one when there
    are two or more), each list in the data's order."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must be in [0, 1)")
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_val = int(len(examples) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(examples) > 1:
        n_val = 1
    val = set(idx[:n_val])
    return ([e for i, e in enumerate(examples) if i not in val],
            [e for i, e in enumerate(examples) if i in val])


def split_by_prompt(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out) of records with a `.prompt` (PrefPair, Rating): `fraction` of the
    distinct prompts (at least one when there are two or more) held out with every record
    that has it; each list keeps the data's order."""
    if not 0 <= fraction < 1:
        raise UserError(f"--val_fraction={fraction} must be in [0, 1)")
    keys = [json.dumps(p.prompt, ensure_ascii=False, sort_keys=True) for p in pairs]
    prompts = sorted(set(keys))
    random.Random(seed).shuffle(prompts)
    n = round(len(prompts) * fraction)
    if fraction > 0 and len(prompts) > 1:
        n = min(len(prompts) - 1, max(1, n))
    held = set(prompts[:n])
    return ([p for p, k in zip(pairs, keys, strict=True) if k not in held],
            [p for p, k in zip(pairs, keys, strict=True) if k in held])


def prepare_model(model_name: str, method: str, lora, dtype: str, device: torch.device):
    """(model, tokenizer, generation config) with LoRA adapters added if asked."""
    if dtype == "auto":  # full finetuning keeps fp32 master weights; a LoRA base may stay small
        dtype = "auto" if method == "lora" and device.type == "cuda" else "float32"
    model, tok, gen = open_model(model_name, device="cpu", dtype=dtype)
    if method == "lora":
        add_adapter(model, lora)
    return model, tok, gen


def checkpoint_fns(method: str, adapter: str = "default"):
    """save_fn/load_fn for fit: LoRA checkpoints hold only the adapter (named `adapter`).
    A resumed run writes the saved values into the adapter's own Parameters: the optimizer
    fit built holds those very tensors, so loading a fresh adapter beside them would leave
    it stepping orphans."""
    if method != "lora":
        return None, None

    def save_fn(model, path: Path, tokenizer, trainer_state: dict) -> None:
        save_adapter(model, path, name=adapter)
        # Written last: a checkpoint counts (list_checkpoints) only once this file exists.
        with atomic_path(path / TRAINER_STATE) as tmp:
            torch.save(trainer_state, tmp)

    def load_fn(model, path: Path) -> None:
        live, saved = lora_state_dict(model, adapter), load_file(path / WEIGHTS_FILE)
        if set(live) != set(saved):
            raise UserError(f"{path}: the checkpoint's adapter does not match this run's (other "
                            "LoRA settings?); resume with the settings it was started with")
        with torch.no_grad():
            for k, t in live.items():
                t.copy_(saved[k])

    return save_fn, load_fn


def summarize_params(model) -> str:
    """"1.2M of 30M parameters trained (4%)": a shared weight counted once."""
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{trainable / 1e6:.3g}M of {total / 1e6:.3g}M parameters trained ({100 * trainable / total:.2g}%)"


def save_result(model, tok, gen: dict, out: Path, method: str, base: str) -> Path:
    """Write the trained result: OUT/adapter (PEFT layout, naming `base`) with --method lora,
    else the whole model in OUT/model."""
    if method == "lora":
        return save_adapter(model, out / "adapter", base_model_name_or_path=base)
    return save_model(out / "model", model, tok, generation=gen)


def setup(model: str, ref: str | None, method: str, lora: LoraConfig, dtype: str, max_len: int | None,
          resume: bool, out: str, train: TrainConfig, default_lr: float):
    """Shared start of `train dpo` and `train kto`: (policy, tokenizer, generation config,
    train config, device, world size, pad id, ref or None). `default_lr` is the command's
    own, replaced by the LoRA default when --method lora and no --lr is given."""
    if method == "lora" and train.lr == default_lr:
        train = replace(train, lr=PREFERENCE_LORA_LR)
        if is_main_process():
            print(f"learning rate {PREFERENCE_LORA_LR:g}, the LoRA default (--lr sets another)")
    train.validate()
    if list_checkpoints(out) and not resume:  # say so before the reference pass, not after
        raise UserError(f"{out} already holds checkpoints from an earlier run; pass --resume to "
                        "continue it, or choose another --out")
    device = pick_device(train.device)
    _, world = init_distributed(device)
    torch.manual_seed(train.seed)  # LoRA's initial A: a rerun (or an uninterrupted run) matches
    net, tok, gen = prepare_model(model, method, lora, dtype, device)
    max_len = context_length(max_len, net.config.max_position_embeddings, "--max_len")
    pad = net.config.pad_token_id if net.config.pad_token_id is not None else tok.eos_id
    if ref is not None and Path(ref).expanduser().resolve() == Path(model).expanduser().resolve():
        ref = None
    return net, tok, gen, train, device, world, pad, ref, max_len


def finish(title: str, net, tok, gen, run: Path, method: str, model: str,
           summary: dict, keys: tuple[str, str], line: str) -> dict:
    """Write the model or adapter and the curve; print the summary line."""
    path = save_result(net, tok, gen, run, method, str(model))
    loss_curve(run / "metrics.jsonl", run / "loss.png", title=title)
    val = "" if keys[0] not in summary else line.format(*(summary[k] for k in keys))
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.4f}{val}, "
          f"{summary['tok_s']:,.0f} tokens/s\n{'adapter' if method == 'lora' else 'model'}: "
          f"{path}  curve: {run / 'loss.png'}")
    return {**summary, "path": str(path), "curve": str(run / "loss.png")}
