"""LoRA adapters (Hu et al. 2021), saved and loaded in PEFT's file format.

A LoRA adapter leaves a linear layer's weight W frozen and learns a low-rank change to it:

    y = W x + b + (alpha / r) · B (A x)        A: (r, in), B: (out, r), r ≪ min(in, out)

A starts random (Kaiming-uniform, as PEFT does) and B at zero, so a fresh adapter changes
nothing; training moves only A and B, a few MB instead of the whole model.

    from jielong.lora import LoraConfig, add_adapter, save_adapter, load_adapter, merge_adapter
    add_adapter(model, LoraConfig(r=8, alpha=16))       # wraps q/k/v/o/gate/up/down_proj
    ...train...                                         # only lora_A / lora_B require grad
    save_adapter(model, "runs/x/adapter")               # PEFT layout: PEFT and vLLM load it
    load_adapter(other_model, "runs/x/adapter", name="chat")
    merge_adapter(model)                                # W += (alpha/r)·B@A, plain layers again

How it sits in the model. `LoRALinear` replaces an `nn.Linear` in place and keeps the very
same `weight` / `bias` Parameters, so the base weights keep their state-dict names
(`model.layers.0.self_attn.q_proj.weight`) and still load and save with jielong.checkpoint;
the adapters add `….q_proj.lora_A.<name>.weight` entries beside them (`base_state_dict`
leaves them out). One module holds any number of named adapters; `set_adapter` picks the
one every forward uses (or None: the base alone).

Fully trained modules (`LoraConfig.trainable`, PEFT's `modules_to_save`): each adapter holds
its own full copy of the embedding or output matrix (`TrainableEmbedding`, and the `trained`
copies of a `LoRALinear`), again leaving the base Parameter untouched.

Tied embeddings (lm_head shares embed_tokens' matrix). PEFT by default gives each module in
`modules_to_save` its own copy, which silently unties them: training "lm_head" of a tied model
trains a second matrix while the input embedding stays frozen. jielong keeps the tie instead:
on a tied model, `trainable` with embed_tokens and/or lm_head trains ONE shared copy, and the
adapter is saved as PEFT's `ensure_weight_tying=True` writes it (modules_to_save
["embed_tokens", "lm_head"], both tensors stored, equal), which recent PEFT loads tied and an
older PEFT loads as two equal copies — the same numbers either way. An adapter PEFT wrote
without `ensure_weight_tying` (say modules_to_save ["lm_head"] on a tied model) loads with
PEFT's untied meaning, and merging it unties the merged model (config.tie_word_embeddings
becomes false, lm_head gets its own matrix), exactly what that adapter computes.

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
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jielong.errors import UserError, json_problem

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEAR = ATTENTION + MLP  # what "all-linear" means: every linear layer but the output head
ALL_LINEAR = "all-linear"
TARGET_CHOICES = LINEAR + ("lm_head",)
TRAINABLE_CHOICES = ("embed_tokens", "lm_head")

PREFIX = "base_model.model."  # PEFT's path to the wrapped model in every saved key
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"  # older PEFT versions

_EMBED, _HEAD = "model.embed_tokens", "lm_head"
_TRAINABLE_PATHS = {"embed_tokens": _EMBED, "lm_head": _HEAD}


def _names(value, what: str) -> list[str]:
    """A list of module names from a list or a comma-separated string, duplicates dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple | set) or not all(isinstance(v, str) for v in value):
        raise UserError(f"LoRA {what} must be a list of module names, got {value!r}")
    return list(dict.fromkeys(v.strip() for v in value if v.strip()))


@dataclass
class LoraConfig:
    """Low-rank adapters on the model's linear layers (LoRA).

    Args:
        r: rank of each adapter (the inner size of B·A); 8-64 is typical
        alpha: scale: the adapter's output is multiplied by alpha/r (alpha/√r with rslora)
        dropout: dropout on the adapter's input while training (0 to 1)
        target_modules: linear layers that get adapters: q_proj k_proj v_proj o_proj
            gate_proj up_proj down_proj lm_head, or all-linear (every one but lm_head)
        trainable: modules trained in full beside the adapters (PEFT's modules_to_save):
            embed_tokens and/or lm_head; on a tied model they share one trained matrix
        rslora: rank-stabilised LoRA: scale by alpha/√r instead of alpha/r
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LINEAR))
    trainable: list[str] = field(default_factory=list)
    rslora: bool = False

    def __post_init__(self) -> None:
        def bad(msg: str) -> UserError:
            return UserError(f"impossible LoRA config: {msg}")

        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise bad(f"r={self.r!r} must be a positive whole number (8-64 is typical)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise bad(f"alpha={self.alpha!r} must be a positive number (often 2·r)")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) \
                or not 0 <= self.dropout < 1:
            raise bad(f"dropout={self.dropout!r} must be at least 0 and below 1")
        targets = _names(self.target_modules, "target_modules")
        if [t.lower() for t in targets] == [ALL_LINEAR]:
            targets = list(LINEAR)
        choices = ", ".join(TARGET_CHOICES) + f" (or {ALL_LINEAR} alone)"
        if not targets:
            raise bad(f"target_modules is empty; name at least one of {choices}")
        for t in targets:
            if t not in TARGET_CHOICES:
                raise bad(f"target module {t!r} is not one of {choices}")
        self.target_modules = targets
        self.trainable = _names(self.trainable, "trainable")
        for t in self.trainable:
            if t not in TRAINABLE_CHOICES:
                raise bad(f"trainable module {t!r} is not one of {', '.join(TRAINABLE_CHOICES)}")
            if t in targets:
                raise bad(f"{t} is both a LoRA target and trained in full; choose one")

    @property
    def scaling(self) -> float:
        return _scaling(self.alpha, self.r, self.rslora)


def _scaling(alpha: float, r: int, rslora: bool) -> float:
    return alpha / (math.sqrt(r) if rslora else r)


def _adapter_dtype(base: torch.dtype) -> torch.dtype:
    # Low-rank factors train in float32 under a half-precision base, as PEFT does by default
    # (autocast_adapter_dtype): bf16 has too few bits for small updates to accumulate.
    return torch.float32 if base in (torch.float16, torch.bfloat16) else base


class _Adapted:
    """What both wrappers share: full per-adapter copies of the weight, and the active name."""

    weight: nn.Parameter
    trained: nn.ParameterDict
    active: str | None

    def _weight(self) -> torch.Tensor:
        name = self.active
        return self.trained[name] if name is not None and name in self.trained else self.weight


class LoRALinear(_Adapted, nn.Linear):
    """An nn.Linear with named low-rank adapters (and optional full copies of its weight).

    It takes over the wrapped layer's own `weight` and `bias` Parameters (same objects, same
    state-dict names), adds `lora_A` / `lora_B` (ModuleDicts of bias-free nn.Linear, one entry
    per adapter) and `trained` (a full copy of the weight per adapter that trains one), and
    computes `F.linear(x, W, b) + scaling · B(A(dropout(x)))` for the active adapter.
    """

    def __init__(self, base: nn.Linear):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.trained = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.alpha: dict[str, float] = {}
        self.active = None
        self.train(base.training)

    def add_lora(self, name: str, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False) -> None:
        w = self.weight
        dtype = _adapter_dtype(w.dtype)
        A = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=dtype)
        B = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=dtype)
        nn.init.kaiming_uniform_(A.weight, a=math.sqrt(5))
        nn.init.zeros_(B.weight)
        self.lora_A[name], self.lora_B[name] = A, B
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name], self.alpha[name] = _scaling(alpha, r, rslora), alpha
        for d in (self.lora_A, self.lora_B, self.lora_dropout):
            d[name].train(self.training)  # new modules start in training mode: follow the layer

    def remove(self, name: str) -> None:
        for d in (self.lora_A, self.lora_B, self.lora_dropout, self.trained):
            if name in d:
                del d[name]
        self.scaling.pop(name, None)
        self.alpha.pop(name, None)
        if self.active == name:
            self.active = None

    def delta(self, name: str) -> torch.Tensor:
        """scaling · B @ A, in float32: what merging adds to the weight."""
        A, B = self.lora_A[name].weight.float(), self.lora_B[name].weight.float()
        return (B @ A) * self.scaling[name]

    def effective_weight(self) -> torch.Tensor:
        """The matrix this layer applies under the active adapter, B@A folded in (with
        autograd; the adapter's dropout left out): for losses that take the output matrix
        itself, such as jielong.train.losses.linear_cross_entropy."""
        w, name = self._weight(), self.active
        if name is not None and name in self.lora_A:
            w = w + self.delta(name).to(w.dtype)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self._weight(), self.bias)
        name = self.active
        if name is not None and name in self.lora_A:
            A, B = self.lora_A[name], self.lora_B[name]
            h = B(A(self.lora_dropout[name](x.to(A.weight.dtype))))
            y = y + (h * self.scaling[name]).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{n}: r={self.lora_A[n].out_features}" for n in self.lora_A)
        full = ", ".join(f"{n}: full" for n in self.trained)
        return f"{super().extra_repr()}, adapters={{{', '.join(filter(None, [ranks, full]))}}}, " \
               f"active={self.active!r}"


class TrainableEmbedding(_Adapted, nn.Embedding):
    """An nn.Embedding whose matrix an adapter trains in full (PEFT's modules_to_save): the
    base matrix stays as it is; each adapter has its own copy in `trained`."""

    def __init__(self, base: nn.Embedding):
        nn.Module.__init__(self)
        for k in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                  "scale_grad_by_freq", "sparse"):
            setattr(self, k, getattr(base, k))
        self.weight = base.weight
        self.trained = nn.ParameterDict()
        self.active = None
        self.train(base.training)

    def remove(self, name: str) -> None:
        if name in self.trained:
            del self.trained[name]
        if self.active == name:
            self.active = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self._weight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


# ----------------------------------------------------------------------------- model surgery

def _wrappers(model: nn.Module) -> Iterator[tuple[str, LoRALinear | TrainableEmbedding]]:
    for path, m in model.named_modules():
        if isinstance(m, LoRALinear | TrainableEmbedding):
            yield path, m


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _wrap(model: nn.Module, path: str) -> LoRALinear | TrainableEmbedding:
    m = model.get_submodule(path)
    if isinstance(m, LoRALinear | TrainableEmbedding):
        return m
    if isinstance(m, nn.Linear):
        new = LoRALinear(m)
    elif isinstance(m, nn.Embedding):
        new = TrainableEmbedding(m)
    else:
        raise TypeError(f"{path} is a {type(m).__name__}, not a Linear or Embedding")
    _replace(model, path, new)
    return new


def _plain(m: LoRALinear | TrainableEmbedding) -> nn.Module:
    """The plain layer again, holding the same Parameters."""
    if isinstance(m, LoRALinear):
        new = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        new.bias = m.bias
    else:
        new = nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx, m.max_norm,
                           m.norm_type, m.scale_grad_by_freq, m.sparse, device="meta")
    new.weight = m.weight
    return new.train(m.training)


def _layer_paths(model: nn.Module, names) -> list[str]:
    """Full module paths of the named linear layers in every decoder layer (and lm_head)."""
    paths = []
    for i in range(len(model.model.layers)):
        paths += [f"model.layers.{i}.{'self_attn' if n in ATTENTION else 'mlp'}.{n}"
                  for n in LINEAR if n in names]
    return paths + ([_HEAD] if "lm_head" in names else [])


def _registry(model: nn.Module) -> dict[str, LoraConfig]:
    if not hasattr(model, "lora_adapters"):
        model.lora_adapters = {}
        model.lora_active = None
        # requires_grad of every parameter before any adapter, restored by `unload`
        model._lora_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    return model.lora_adapters


def _check_new_name(model: nn.Module, name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise UserError(f"adapter name {name!r}: use letters, digits, _ and - only")
    if hasattr(nn.ModuleDict(), name) or hasattr(nn.ParameterDict(), name):
        raise UserError(f"adapter name {name!r} is reserved by torch; choose another name")
    if name in getattr(model, "lora_adapters", {}):
        raise UserError(f"the model already has an adapter named {name!r}; choose another name "
                        "or remove_adapter it first")


def _freeze_base(model: nn.Module) -> None:
    adapter_params = {id(p) for _, m in _wrappers(model) for n, p in m.named_parameters()
                      if n.startswith(("lora_A.", "lora_B.", "trained."))}
    for p in model.parameters():
        if id(p) not in adapter_params:
            p.requires_grad_(False)


def _tied(model: nn.Module) -> bool:
    return model.lm_head.weight is model.model.embed_tokens.weight


def _train_only(model: nn.Module, name: str, trainable: bool) -> None:
    """Freeze the base; adapter `name`'s tensors train (or not); make it the active one."""
    _freeze_base(model)
    for _, m in _wrappers(model):
        for n, p in m.named_parameters():
            if n.startswith(("lora_A.", "lora_B.", "trained.")) and n.split(".")[1] == name:
                p.requires_grad_(trainable)
    set_adapter(model, name)


def add_adapter(model: nn.Module, cfg: LoraConfig, name: str = "default") -> nn.Module:
    """Add a fresh adapter `name` (A random, B zero: no change yet), make it the active one,
    freeze every base parameter and leave only this adapter's tensors trainable."""
    _check_new_name(model, name)
    if cfg.trainable and "lm_head" in cfg.target_modules and _tied(model):
        raise UserError("impossible LoRA config: on a model with tied embeddings, trained "
                        f"{'/'.join(cfg.trainable)} share one matrix with lm_head, so lm_head "
                        "cannot also carry a LoRA; drop lm_head from target_modules")
    reg = _registry(model)
    for path in _layer_paths(model, cfg.target_modules):
        _wrap(model, path).add_lora(name, cfg.r, cfg.alpha, cfg.dropout, cfg.rslora)
    paths = [_TRAINABLE_PATHS[t] for t in cfg.trainable]
    if paths and _tied(model):  # one shared trained matrix keeps the tie (see module doc)
        paths = [_EMBED, _HEAD]
        copy = nn.Parameter(model.model.embed_tokens.weight.detach().clone())
        copies = {p: copy for p in paths}
    else:
        copies = {p: nn.Parameter(model.get_submodule(p).weight.detach().clone()) for p in paths}
    for path, copy in copies.items():
        _wrap(model, path).trained[name] = copy
    reg[name] = cfg
    _train_only(model, name, True)
    return model


def adapter_names(model: nn.Module) -> list[str]:
    return list(getattr(model, "lora_adapters", {}))


def active_adapter(model: nn.Module) -> str | None:
    return getattr(model, "lora_active", None)


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make `name` the adapter every forward uses; None runs the base model alone."""
    if name is not None and name not in adapter_names(model):
        have = ", ".join(adapter_names(model)) or "none"
        raise UserError(f"no adapter named {name!r} on this model (it has: {have})")
    for _, m in _wrappers(model):
        m.active = name
    if hasattr(model, "lora_adapters"):
        model.lora_active = name


@contextmanager
def using_adapter(model: nn.Module, name: str | None):
    """`with using_adapter(model, "chat"): …` runs with that adapter, then restores the one
    that was active (for serving several adapters on one base, one request at a time)."""
    before = active_adapter(model)
    set_adapter(model, name)
    try:
        yield model
    finally:
        set_adapter(model, before)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied matrix counts once."""
    params = list(model.parameters())  # de-duplicated by identity
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def output_weight(model: nn.Module) -> torch.Tensor:
    """The output matrix (vocab, hidden) the model applies now: lm_head's own weight, or
    under an adapter its trained copy and/or LoRA folded in. Fused losses that multiply by
    the head's matrix themselves must use this instead of `model.lm_head.weight`."""
    head = getattr(model, "module", model).lm_head  # unwrap DDP
    return head.effective_weight() if isinstance(head, LoRALinear) else head.weight


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() without any adapter tensor: the base model's names only."""
    adapter = tuple(f"{path}.{part}." for path, _ in _wrappers(model)
                    for part in ("lora_A", "lora_B", "trained"))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(adapter)}


def _default_name(model: nn.Module, name: str | None) -> str:
    names = adapter_names(model)
    if name is None:
        name = active_adapter(model) or (names[0] if len(names) == 1 else None)
        if name is None:
            raise UserError(f"say which adapter: this model has {', '.join(names) or 'none'}")
    if name not in names:
        raise UserError(f"no adapter named {name!r} on this model (it has: "
                        f"{', '.join(names) or 'none'})")
    return name


def remove_adapter(model: nn.Module, name: str) -> nn.Module:
    """Drop adapter `name`; with none left, the model is plain again (see `unload`)."""
    name = _default_name(model, name)
    for _, m in _wrappers(model):
        m.remove(name)
    del model.lora_adapters[name]
    if model.lora_active == name:
        model.lora_active = None
    if not model.lora_adapters:
        unload(model)
    return model


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: plain nn.Linear / nn.Embedding layers holding the
    untouched base Parameters, with requires_grad as it was before the first adapter."""
    for path, m in list(_wrappers(model)):
        _replace(model, path, _plain(m))
    flags = getattr(model, "_lora_requires_grad", {})
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, p.requires_grad))
    for attr in ("lora_adapters", "lora_active", "_lora_requires_grad"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


@torch.no_grad()
def merge_adapter(model: nn.Module, name: str | None = None) -> nn.Module:
    """Fold adapter `name` (default: the active one) into the base weights — W += scaling·B@A,
    trained copies replace their matrices — and return the model with plain layers again.
    Other adapters are dropped: they were trained against the unmerged base. A tied model
    stays tied unless the adapter changes lm_head and embed_tokens differently (a LoRA on
    lm_head, or an untied trained copy of one of them): then lm_head gets its own matrix and
    config.tie_word_embeddings becomes false, which is what the adapter computes."""
    name = _default_name(model, name)
    new: dict[str, torch.Tensor] = {}  # module path -> its merged weight
    for path, m in _wrappers(model):
        w = m.trained[name] if name in m.trained else m.weight
        if isinstance(m, LoRALinear) and name in m.lora_A:
            w = (w.float() + m.delta(name).to(w.device)).to(w.dtype)
        if w is not m.weight:
            new[path] = w
    if _tied(model) and (_EMBED in new or _HEAD in new):
        embed = new.get(_EMBED, model.model.embed_tokens.weight)
        head = new.get(_HEAD, model.model.embed_tokens.weight)
        if head is embed:  # one shared trained copy: write it once, the tie stays
            new.pop(_HEAD)
        else:
            was = model._lora_requires_grad.get(f"{_EMBED}.weight", True)
            model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone(),
                                                requires_grad=was)
            model.config.tie_word_embeddings = False
    for path, w in new.items():
        model.get_submodule(path).weight.copy_(w)
    return unload(model)


# ----------------------------------------------------------------------------- PEFT files

def lora_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter `name`'s tensors under the keys PEFT saves them with (detached, not copied):
    `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, and for a fully trained
    module `base_model.model.<module>.weight`."""
    name = _default_name(model, name)
    sd = {}
    for path, m in _wrappers(model):
        if isinstance(m, LoRALinear) and name in m.lora_A:
            sd[f"{PREFIX}{path}.lora_A.weight"] = m.lora_A[name].weight.detach()
            sd[f"{PREFIX}{path}.lora_B.weight"] = m.lora_B[name].weight.detach()
        if name in m.trained:
            sd[f"{PREFIX}{path}.weight"] = m.trained[name].detach()
    return sd


def _alpha_json(a: float):
    return int(a) if float(a).is_integer() else float(a)


def adapter_config(model: nn.Module, name: str = "default",
                   base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json for adapter `name`, as PEFT writes it for a LoRA."""
    name = _default_name(model, name)
    cfg = model.lora_adapters[name]
    loras = {p: m for p, m in _wrappers(model) if isinstance(m, LoRALinear) and name in m.lora_A}
    suffixes = sorted({p.rsplit(".", 1)[-1] for p in loras}, key=TARGET_CHOICES.index)
    # Module names when they cover every layer (as written by add_adapter), else full paths.
    targets = suffixes if set(_layer_paths(model, suffixes)) == set(loras) else sorted(loras)
    rank_pattern = {p: m.lora_A[name].out_features for p, m in loras.items()
                    if m.lora_A[name].out_features != cfg.r}
    alpha_pattern = {p: _alpha_json(m.alpha[name]) for p, m in loras.items()
                     if m.alpha[name] != cfg.alpha}
    trained = {p: m.trained[name] for p, m in _wrappers(model) if name in m.trained}
    shared = _EMBED in trained and trained.get(_HEAD) is trained[_EMBED]
    to_save = [t for t, p in _TRAINABLE_PATHS.items() if p in trained]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None if base_model_name_or_path is None
        else str(base_model_name_or_path),
        "revision": None,
        "r": cfg.r,
        "lora_alpha": _alpha_json(cfg.alpha),
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
    from safetensors.torch import save_file

    from jielong.files import atomic_path, write_json

    name = _default_name(model, name)
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
    from jielong.checkpoint import read_safetensors

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
    _check_new_name(model, name)
    file, tensors = _read_tensors(d)
    where = f"{file}"
    mcfg = model.config
    about = f"this {mcfg.model_type} base model ({mcfg.num_hidden_layers} layers, hidden size " \
            f"{mcfg.hidden_size}, vocabulary {mcfg.vocab_size})"
    lora_paths = set(_layer_paths(model, TARGET_CHOICES))
    lora: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    dtype = model.lm_head.weight.dtype
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
        if path in _TRAINABLE_PATHS.values() and leaf == "weight":
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

    # Build it.
    _registry(model)
    dropout = float(conf.get("lora_dropout") or 0.0)
    for path, (A, B, r, alpha) in plan.items():
        m = _wrap(model, path)
        m.add_lora(name, r, alpha, dropout, rslora)
        with torch.no_grad():
            m.lora_A[name].weight.copy_(A)
            m.lora_B[name].weight.copy_(B)
    if full and _tied(model) and conf.get("ensure_weight_tying"):
        t = full.get(_EMBED, full.get(_HEAD))
        shared = nn.Parameter(t.to(device=model.lm_head.weight.device, dtype=dtype))
        copies = {_EMBED: shared, _HEAD: shared}
    else:
        copies = {p: nn.Parameter(t.to(device=model.get_submodule(p).weight.device, dtype=dtype))
                  for p, t in full.items()}
    for path, copy in copies.items():
        _wrap(model, path).trained[name] = copy
    suffixes = sorted({p.rsplit(".", 1)[-1] for p in plan}, key=TARGET_CHOICES.index)
    trainable = [t for t, p in _TRAINABLE_PATHS.items() if p in copies and t not in suffixes]
    model.lora_adapters[name] = LoraConfig(
        r=r0, alpha=alpha0, dropout=dropout,
        target_modules=suffixes or list(LINEAR), trainable=trainable, rslora=rslora)
    _train_only(model, name, is_trainable)
    return name


# ----------------------------------------------------------------------------- CLI

def merge_cmd(model: str, adapter: str, out: str) -> None:
    """Fold a LoRA adapter into its base model and save the result as a full model folder.

    The merged model loads anywhere a Hugging Face model does (transformers, vLLM, llama.cpp
    after `jielong export gguf`), and runs as fast as the base: no adapter left to apply.

    Args:
        model: the base model: a folder (from jielong or Hugging Face) or a hub id
        adapter: the LoRA adapter folder (adapter_config.json + adapter_model.safetensors),
            written by jielong or by PEFT
        out: folder to write the merged model to (replaced atomically if it exists)
    """
    from jielong.checkpoint import load_model, save_model
    from jielong.hub import read_generation_config, resolve_model
    from jielong.tokenizer import Tokenizer

    base_dir = resolve_model(model)
    adapter_dir = resolve_model(adapter)
    out_dir = Path(out)
    for what, d in (("base model", base_dir), ("adapter", adapter_dir)):
        if out_dir.resolve() == Path(d).resolve():
            raise UserError(f"{out}: is the {what}'s own folder; write the merged model elsewhere")
    read_adapter_config(adapter_dir)  # fail on a bad adapter before loading a large model
    net = load_model(base_dir, dtype=torch.float32)  # merge in float32, save in the base's dtype
    tok = Tokenizer.from_dir(base_dir) if (base_dir / "tokenizer.json").is_file() else None
    name = load_adapter(net, adapter_dir)
    cfg = net.lora_adapters[name]
    n_lora = sum(1 for _, m in _wrappers(net) if isinstance(m, LoRALinear) and name in m.lora_A)
    full = [t for t in TRAINABLE_CHOICES if any(p == _TRAINABLE_PATHS[t] and name in m.trained
                                                 for p, m in _wrappers(net))]
    merge_adapter(net, name)
    dtype = net.config.torch_dtype if net.config.torch_dtype in ("bfloat16", "float16") \
        else "float32"
    net.to(getattr(torch, dtype))
    save_model(out_dir, net, tok, generation=read_generation_config(base_dir))
    extra = f" + trained {', '.join(full)}" if full else ""
    print(f"merged {adapter} (LoRA r={cfg.r}, alpha={_alpha_json(cfg.alpha)} on {n_lora} "
          f"linear layers{extra}) into {model} → {out_dir} "
          f"({net.config.num_params / 1e6:.1f}M parameters, {dtype})")
