"""LoRA adapters as files in PEFT's layout: what PEFT and vLLM load, and what PEFT saves.

    from jielong.adapter_files import save_adapter, load_adapter
    save_adapter(model, "runs/x/adapter")               # adapter_config.json + safetensors
    load_adapter(other_model, "runs/x/adapter", name="chat")

The PEFT format (what `save_adapter` writes and `load_adapter` reads):
- `adapter_config.json`: peft_type "LORA", r, lora_alpha, lora_dropout, target_modules,
  modules_to_save, use_rslora (scaling alpha/√r instead of alpha/r), rank_pattern /
  alpha_pattern (per-module r and alpha), bias "none", …
- `adapter_model.safetensors`: keys prefixed with PEFT's wrapper path `base_model.model.`,
  without the adapter name: `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
  (r, in) and `….lora_B.weight` (out, r); a fully trained module is saved under its plain
  name, `base_model.model.lm_head.weight`, `base_model.model.model.embed_tokens.weight`.
  PEFT also saves the base weight of a LoRA'd lm_head (`…lm_head.base_layer.weight`); it is
  read only to check that it is this base model's own.
Refused with a clear message: other PEFT methods (IA3, prefix tuning, …), DoRA and the other
LoRA variants, trained biases (bias != "none", lora_bias), LoRA on embeddings, trainable
tokens, and initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA).

The adapters themselves (layers, adding, choosing, merging) are `jielong.lora`'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from jielong.checkpoint import read_safetensors
from jielong.errors import UserError, json_problem
from jielong.files import atomic_path, write_json
from jielong.lora import (
    EMBED,
    HEAD,
    TARGET_CHOICES,
    TRAINABLE_CHOICES,
    TRAINABLE_PATHS,
    LoRALinear,
    adapted_modules,
    adapter_names,
    check_new_name,
    install_adapter,
    layer_paths,
    named_adapter,
)

PREFIX = "base_model.model."  # PEFT's path to the wrapped model in every saved key
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"  # older PEFT versions


def lora_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter `name`'s tensors under the keys PEFT saves them with (detached, not copied):
    `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, and for a fully trained
    module `base_model.model.<module>.weight`."""
    name = named_adapter(model, name)
    sd = {}
    for path, m in adapted_modules(model):
        if isinstance(m, LoRALinear) and name in m.lora_A:
            sd[f"{PREFIX}{path}.lora_A.weight"] = m.lora_A[name].weight.detach()
            sd[f"{PREFIX}{path}.lora_B.weight"] = m.lora_B[name].weight.detach()
        if name in m.trained:
            sd[f"{PREFIX}{path}.weight"] = m.trained[name].detach()
    return sd


def alpha_json(a: float):
    return int(a) if float(a).is_integer() else float(a)


def adapter_config(model: nn.Module, name: str = "default",
                   base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json for adapter `name`, as PEFT writes it for a LoRA."""
    name = named_adapter(model, name)
    cfg = model.lora_adapters[name]
    loras = {p: m for p, m in adapted_modules(model)
             if isinstance(m, LoRALinear) and name in m.lora_A}
    suffixes = sorted({p.rsplit(".", 1)[-1] for p in loras}, key=TARGET_CHOICES.index)
    # Module names when they cover every layer (as written by add_adapter), else full paths.
    targets = suffixes if set(layer_paths(model, suffixes)) == set(loras) else sorted(loras)
    rank_pattern = {p: m.lora_A[name].out_features for p, m in loras.items()
                    if m.lora_A[name].out_features != cfg.r}
    alpha_pattern = {p: alpha_json(m.alpha[name]) for p, m in loras.items()
                     if m.alpha[name] != cfg.alpha}
    trained = {p: m.trained[name] for p, m in adapted_modules(model) if name in m.trained}
    shared = EMBED in trained and trained.get(HEAD) is trained[EMBED]
    to_save = [t for t, p in TRAINABLE_PATHS.items() if p in trained]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None if base_model_name_or_path is None
        else str(base_model_name_or_path),
        "revision": None,
        "r": cfg.r,
        "lora_alpha": alpha_json(cfg.alpha),
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "modules_to_save": to_save or None,
        "ensure_weight_tying": shared,
        "use_rslora": cfg.rslora,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "lora_bias": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "exclude_modules": None,
        "trainable_token_indices": None,
        "layer_replication": None,
        "target_parameters": None,
    }


def save_adapter(model: nn.Module, out_dir: str | Path, name: str = "default",
                 base_model_name_or_path: str | None = None) -> Path:
    """Write adapter `name` as a PEFT LoRA folder: adapter_config.json and
    adapter_model.safetensors (each written atomically: weights first, then the config)."""
    name = named_adapter(model, name)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another place for the adapter")
    out.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for k, t in lora_state_dict(model, name).items():
        t = t.contiguous().cpu()
        if t.data_ptr() in seen:  # the two halves of a tied pair: safetensors wants them apart
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[k] = t
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    write_json(out / CONFIG_FILE, adapter_config(model, name, base_model_name_or_path))
    return out


# PEFT LoRA variants and options that change what the adapter computes; jielong refuses them.
_UNSUPPORTED = {
    "use_dora": "DoRA (use_dora)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "lora_bias": "a trained LoRA bias (lora_bias)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "layer_replication": "layer replication (layer_replication)",
    "velora_config": "the VeLoRA variant (velora_config)",
    "monteclora_config": "the MonteCLoRA variant (monteclora_config)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "the KaSA variant (kasa_config)",
}


def _pattern_value(patterns: dict, path: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the
    module path (as a regular expression)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """adapter_config.json of a PEFT LoRA folder, checked: what jielong cannot run is refused."""
    d = Path(adapter_dir)
    if not d.is_dir():
        raise UserError(f"{d}: no such adapter folder; pass a folder with adapter_config.json and "
                        "adapter_model.safetensors (from jielong or PEFT's save_pretrained)")
    path = d / CONFIG_FILE
    if not path.is_file():
        hint = (" — it holds a full model (config.json): load it as the model, not as an adapter"
                if (d / "config.json").is_file() else "")
        raise UserError(f"{d}: no {CONFIG_FILE}, so not a PEFT adapter folder{hint}; pass the "
                        "folder save_adapter or PEFT's save_pretrained wrote")
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({json_problem(e)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; re-save the adapter") from None
    if not isinstance(conf, dict):
        raise UserError(f"{path}: must hold a JSON object")

    def bad(msg: str) -> UserError:
        return UserError(f"{path}: {msg}")

    kind = conf.get("peft_type")
    if kind != "LORA":
        raise bad(f"peft_type {kind!r}: jielong loads only LoRA adapters (peft_type LORA)")
    for key, what in _UNSUPPORTED.items():
        if conf.get(key):
            raise bad(f"{what} is not supported; jielong runs plain LoRA (and rsLoRA). Merge it "
                      "with PEFT (merge_and_unload) or retrain without it")
    if conf.get("bias", "none") != "none":
        raise bad(f"bias={conf['bias']!r}: trained biases are not supported; retrain with "
                  "bias='none'")
    init = conf.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda", "mica")):
        raise bad(f"init_lora_weights={init!r} changes the base weights, so this adapter only "
                  "fits its own modified base; convert it to plain LoRA with PEFT "
                  "(path_initial_model_for_weight_conversion) first")
    r, alpha = conf.get("r"), conf.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise bad(f"r={r!r} must be a positive whole number")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise bad(f"lora_alpha={alpha!r} must be a positive number")
    dropout = conf.get("lora_dropout") or 0.0
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise bad(f"lora_dropout={dropout!r} must be at least 0 and below 1")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(conf.get(key) or {}, dict):
            raise bad(f"{key} must be an object of module pattern: value")
    return conf


def _read_tensors(d: Path) -> tuple[Path, Iterator[tuple[str, torch.Tensor]]]:
    if (d / WEIGHTS_FILE).is_file():
        return d / WEIGHTS_FILE, read_safetensors(d / WEIGHTS_FILE)
    if (d / BIN_FILE).is_file():
        def from_bin():
            try:
                sd = torch.load(d / BIN_FILE, map_location="cpu", weights_only=True)
            except Exception as e:  # an unpickling error names what it refused
                raise UserError(f"{d / BIN_FILE}: cannot load safely ({str(e).splitlines()[0]}); "
                                "re-save the adapter as safetensors") from None
            yield from sd.items()
        return d / BIN_FILE, from_bin()
    raise UserError(f"{d}: has {CONFIG_FILE} but no {WEIGHTS_FILE}; the adapter was not saved "
                    "completely")


def _check_base_copy(model: nn.Module, path: str, leaf: str, t: torch.Tensor, what: str) -> None:
    """PEFT saves the base weight of a LoRA'd output head beside its factors
    (`lm_head.base_layer.weight`: save_embedding_layers="auto", for a resized vocabulary) and
    loads it in place of the base's. Such a copy is accepted when it is this base model's
    own tensor (after casting to its dtype); otherwise the adapter belongs to another base."""
    base = getattr(model.get_submodule(path), leaf)
    if base is None:
        raise UserError(f"{what}: this base model's {path} has no {leaf}; the adapter was saved "
                        "with another base model")
    if tuple(t.shape) != tuple(base.shape):
        why = f"shape {tuple(t.shape)}, the base model's {tuple(base.shape)}"
    elif torch.equal(t.to(device=base.device, dtype=base.dtype), base.detach()):
        return
    else:
        diff = (t.float() - base.detach().float().cpu()).abs().max().item()
        why = f"largest difference {diff:.3g}"
    raise UserError(f"{what} is the base model's {path}.{leaf} as PEFT saved it, but it differs "
                    f"from this base model's ({why}); the adapter was trained on another base "
                    "(a resized vocabulary?): load it on that one")


_LORA_KEY = re.compile(r"(?P<path>.+)\.lora_(?P<ab>A|B)(?:\.[A-Za-z0-9_-]+)?\.weight")


def load_adapter(model: nn.Module, adapter_dir: str | Path, name: str | None = None,
                 is_trainable: bool = False) -> str:
    """Load a PEFT LoRA folder (written by `save_adapter` or by PEFT) as adapter `name`
    (default: "default", or the folder's name when that is taken), make it active and return
    its name. Everything is checked before the model is touched: the config (see
    `read_adapter_config`) and every tensor's module and shape against this model. With
    `is_trainable` its tensors require grad (to train on); the base is frozen either way."""
    d = Path(adapter_dir)
    conf = read_adapter_config(d)
    if name is None:
        name = "default" if "default" not in adapter_names(model) else \
            re.sub(r"[^A-Za-z0-9_-]", "_", d.resolve().name) or "adapter"
    check_new_name(model, name)
    file, tensors = _read_tensors(d)
    where = f"{file}"
    mcfg = model.config
    about = f"this {mcfg.model_type} base model ({mcfg.num_hidden_layers} layers, hidden size " \
            f"{mcfg.hidden_size}, vocabulary {mcfg.vocab_size})"
    lora_paths = set(layer_paths(model, TARGET_CHOICES))
    lora: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, t in tensors:
        t = t.to(torch.float32 if t.dtype == torch.float64 else t.dtype, copy=True)
        if not key.startswith(PREFIX):
            raise UserError(f"{where}: tensor {key!r} does not start with {PREFIX!r}, the prefix "
                            "PEFT gives every key; not a PEFT adapter file")
        k = key[len(PREFIX):]
        m = _LORA_KEY.fullmatch(k)
        if m:
            path = m["path"]
            if path not in lora_paths:
                raise UserError(f"{where}: tensor {key!r} is for module {path!r}, which {about} "
                                f"does not have as a linear layer; is the adapter for another base "
                                f"model? (LoRA goes on {', '.join(TARGET_CHOICES)})")
            lora.setdefault(path, {})[m["ab"]] = t
            continue
        if ".lora_embedding_" in k or ".lora_magnitude_vector" in k:
            raise UserError(f"{where}: tensor {key!r}: LoRA on embeddings and DoRA are not "
                            "supported")
        path, _, leaf = k.rpartition(".")
        if path.endswith(".base_layer") and path.removesuffix(".base_layer") in lora_paths \
                and leaf in ("weight", "bias"):
            _check_base_copy(model, path.removesuffix(".base_layer"), leaf, t, f"{where}: "
                             f"tensor {key!r}")
            continue
        if path in TRAINABLE_PATHS.values() and leaf == "weight":
            full[path] = t
            continue
        raise UserError(f"{where}: unexpected tensor {key!r}; jielong loads LoRA factors "
                        f"(lora_A / lora_B) and fully trained {' / '.join(TRAINABLE_CHOICES)}")
    if not lora and not full:
        raise UserError(f"{where}: holds no LoRA tensors")

    # Shapes and ranks against the model, before touching it.
    r0, alpha0, rslora = conf["r"], conf["lora_alpha"], bool(conf.get("use_rslora"))
    plan = {}
    for path, ab in sorted(lora.items()):
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise UserError(f"{where}: {path} has no {missing}; the adapter file is incomplete")
        base = model.get_submodule(path)
        A, B = ab["A"], ab["B"]
        r = A.shape[0]
        if A.dim() != 2 or B.dim() != 2 or B.shape[1] != r:
            raise UserError(f"{where}: {path}: lora_A {tuple(A.shape)} and lora_B "
                            f"{tuple(B.shape)} are not (r, in) and (out, r)")
        if A.shape[1] != base.in_features or B.shape[0] != base.out_features:
            raise UserError(
                f"{where}: {path} in the adapter maps {A.shape[1]} → {B.shape[0]} features, but "
                f"in {about} it maps {base.in_features} → {base.out_features}; the adapter was "
                "trained on a different base model")
        want = _pattern_value(conf.get("rank_pattern"), path, r0)
        if r != want:
            raise UserError(f"{where}: {path} has rank {r} but {CONFIG_FILE} says r={want}; the "
                            "config and the weights do not belong together")
        alpha = _pattern_value(conf.get("alpha_pattern"), path, alpha0)
        plan[path] = (A, B, r, alpha)
    for path, t in full.items():
        w = model.get_submodule(path).weight
        if tuple(t.shape) != tuple(w.shape):
            raise UserError(
                f"{where}: the adapter's trained {path} has shape {tuple(t.shape)} but {about} "
                f"has {tuple(w.shape)}; was the vocabulary resized? Load it on the base model "
                "it was trained from")

    dropout = float(conf.get("lora_dropout") or 0.0)
    return install_adapter(model, name, plan, full, r0, alpha0, dropout, rslora,
                           tie=bool(conf.get("ensure_weight_tying")), trainable=is_trainable)


