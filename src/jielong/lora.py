"""LoRA adapters (Hu et al. 2021) in memory: the layers, and adding, choosing, merging them.

A LoRA adapter leaves a linear layer's weight W frozen and learns a low-rank change to it:

    y = W x + b + (alpha / r) · B (A x)        A: (r, in), B: (out, r), r ≪ min(in, out)

A starts random (Kaiming-uniform, as PEFT does) and B at zero, so a fresh adapter changes
nothing; training moves only A and B, a few MB instead of the whole model.

    from jielong.lora import LoraConfig, add_adapter, merge_adapter
    from jielong.adapter_files import save_adapter, load_adapter
    add_adapter(model, LoraConfig(r=8, alpha=16))       # wraps q/k/v/o/gate/up/down_proj
    ...train...                                         # only lora_A / lora_B require grad
    save_adapter(model, "runs/x/adapter")               # PEFT layout: PEFT and vLLM load it
    load_adapter(other_model, "runs/x/adapter", name="chat")
    merge_adapter(model)                                # W += (alpha/r)·B@A, plain layers again

How it sits in the model. `LoRALinear` replaces an `nn.Linear` in place and keeps the very
same `weight` / `bias` Parameters, so the base weights keep their state-dict names
(`model.layers.0.self_attn.q_proj.weight`) and still load and save with jielong.checkpoint;
the adapters add `….q_proj.lora_A.<name>.weight` entries beside them, which
`checkpoint.base_state_dict` leaves out (each wrapper names them in `adapter_parts`). One
module holds any number of named adapters; `set_adapter` picks the one every forward uses
(or None: the base alone).

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

Saving and loading in PEFT's file format: `jielong.adapter_files`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from jielong.errors import UserError
from jielong.quant import PackedLinear, QuantLinear

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEAR = ATTENTION + MLP  # what "all-linear" means: every linear layer but the output head
ALL_LINEAR = "all-linear"
TARGET_CHOICES = LINEAR + ("lm_head",)
TRAINABLE_CHOICES = ("embed_tokens", "lm_head")

# The module paths of the two matrices an adapter may train in full.
EMBED, HEAD = "model.embed_tokens", "lm_head"
TRAINABLE_PATHS = {"embed_tokens": EMBED, "lm_head": HEAD}


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

    # Children that hold adapter tensors, not the base model's: a checkpoint leaves them out
    # (jielong.checkpoint.base_state_dict reads this, knowing nothing of LoRA).
    adapter_parts = ("lora_A", "lora_B", "trained")
    weight: nn.Parameter
    trained: nn.ParameterDict
    active: str | None

    def _weight(self) -> torch.Tensor:
        name = self.active
        if name is not None and name in self.trained:
            return self.trained[name]
        return self.weight if self.weight is not None else self.base_layer.dequantize()


class LoRALinear(_Adapted, nn.Linear):
    """An nn.Linear with named low-rank adapters (and optional full copies of its weight).

    It takes over the wrapped layer's own `weight` and `bias` Parameters (same objects, same
    state-dict names), adds `lora_A` / `lora_B` (ModuleDicts of bias-free nn.Linear, one entry
    per adapter) and `trained` (a full copy of the weight per adapter that trains one), and
    computes `F.linear(x, W, b) + scaling · B(A(dropout(x)))` for the active adapter.

    On a weight-only quantized layer (jielong.quant.QuantLinear), or one packed for decoding
    on a CPU (PackedLinear), it keeps that layer whole as `base_layer` (PEFT's name for it),
    with `weight` and `bias` None: the base's own kernel computes W x + b and the adapter's
    output is added to it, as QLoRA does.
    """

    def __init__(self, base: nn.Linear | QuantLinear | PackedLinear):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        if isinstance(base, QuantLinear | PackedLinear):
            self.base_layer = base
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        else:
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
        w = self.weight if self.weight is not None else getattr(
            self.base_layer, "qweight", getattr(self.base_layer, "packed", None))
        dtype = _adapter_dtype(w.dtype) if w.is_floating_point() else torch.float32
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
        name = self.active
        if self.weight is None and (name is None or name not in self.trained):
            y = self.base_layer(x)  # a quantized base: its own kernel
        else:
            y = F.linear(x, self._weight(), self.bias)
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

def adapted_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear | TrainableEmbedding]]:
    """(module path, wrapper) for every layer that carries adapters."""
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
    if isinstance(m, nn.Linear | QuantLinear | PackedLinear):
        new = LoRALinear(m)
    elif isinstance(m, nn.Embedding):
        new = TrainableEmbedding(m)
    else:
        raise TypeError(f"{path} is a {type(m).__name__}, not a Linear or Embedding")
    _replace(model, path, new)
    return new


def _plain(m: LoRALinear | TrainableEmbedding) -> nn.Module:
    """The plain layer again, holding the same Parameters."""
    if isinstance(m, LoRALinear) and m.weight is None:
        return m.base_layer
    if isinstance(m, LoRALinear):
        new = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        new.bias = m.bias
    else:
        new = nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx, m.max_norm,
                           m.norm_type, m.scale_grad_by_freq, m.sparse, device="meta")
    new.weight = m.weight
    return new.train(m.training)


def layer_paths(model: nn.Module, names) -> list[str]:
    """Full module paths of the named linear layers in every decoder layer (and lm_head)."""
    paths = []
    for i in range(len(model.model.layers)):
        paths += [f"model.layers.{i}.{'self_attn' if n in ATTENTION else 'mlp'}.{n}"
                  for n in LINEAR if n in names]
    return paths + ([HEAD] if "lm_head" in names else [])


def _registry(model: nn.Module) -> dict[str, LoraConfig]:
    if not hasattr(model, "lora_adapters"):
        model.lora_adapters = {}
        model.lora_active = None
        # requires_grad of every parameter before any adapter, restored by `unload`
        model._lora_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    return model.lora_adapters


def check_new_name(model: nn.Module, name: str) -> None:
    """Refuse `name` for a new adapter: not a plain word, reserved by torch, or taken."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise UserError(f"adapter name {name!r}: use letters, digits, _ and - only")
    if hasattr(nn.ModuleDict(), name) or hasattr(nn.ParameterDict(), name):
        raise UserError(f"adapter name {name!r} is reserved by torch; choose another name")
    if name in getattr(model, "lora_adapters", {}):
        raise UserError(f"the model already has an adapter named {name!r}; choose another name "
                        "or remove_adapter it first")


def _freeze_base(model: nn.Module) -> None:
    adapter_params = {id(p) for _, m in adapted_modules(model) for n, p in m.named_parameters()
                      if n.startswith(("lora_A.", "lora_B.", "trained."))}
    for p in model.parameters():
        if id(p) not in adapter_params:
            p.requires_grad_(False)


def _tied(model: nn.Module) -> bool:
    return model.lm_head.weight is model.model.embed_tokens.weight


def _train_only(model: nn.Module, name: str, trainable: bool) -> None:
    """Freeze the base; adapter `name`'s tensors train (or not); make it the active one."""
    _freeze_base(model)
    for _, m in adapted_modules(model):
        for n, p in m.named_parameters():
            if n.startswith(("lora_A.", "lora_B.", "trained.")) and n.split(".")[1] == name:
                p.requires_grad_(trainable)
    set_adapter(model, name)


def add_adapter(model: nn.Module, cfg: LoraConfig, name: str = "default") -> nn.Module:
    """Add a fresh adapter `name` (A random, B zero: no change yet), make it the active one,
    freeze every base parameter and leave only this adapter's tensors trainable."""
    check_new_name(model, name)
    if cfg.trainable and "lm_head" in cfg.target_modules and _tied(model):
        raise UserError("impossible LoRA config: on a model with tied embeddings, trained "
                        f"{'/'.join(cfg.trainable)} share one matrix with lm_head, so lm_head "
                        "cannot also carry a LoRA; drop lm_head from target_modules")
    reg = _registry(model)
    for path in layer_paths(model, cfg.target_modules):
        _wrap(model, path).add_lora(name, cfg.r, cfg.alpha, cfg.dropout, cfg.rslora)
    paths = [TRAINABLE_PATHS[t] for t in cfg.trainable]
    if paths and _tied(model):  # one shared trained matrix keeps the tie (see module doc)
        paths = [EMBED, HEAD]
        copy = nn.Parameter(model.model.embed_tokens.weight.detach().clone())
        copies = {p: copy for p in paths}
    else:
        copies = {p: nn.Parameter(model.get_submodule(p).weight.detach().clone()) for p in paths}
    for path, copy in copies.items():
        _wrap(model, path).trained[name] = copy
    reg[name] = cfg
    _train_only(model, name, True)
    return model


def install_adapter(model: nn.Module, name: str, factors: dict, full: dict[str, torch.Tensor],
                    r: int, alpha: float, dropout: float, rslora: bool, tie: bool,
                    trainable: bool) -> str:
    """Add adapter `name` with given weights — `factors` {module path: (A, B, r, alpha)},
    `full` {module path: trained matrix} — make it active and freeze the base; with `tie` on
    a tied model the one trained matrix is shared by embed_tokens and lm_head. Every shape
    must have been checked against the model already (adapter_files.load_adapter does)."""
    dtype = model.lm_head.weight.dtype
    _registry(model)
    for path, (A, B, rank, a) in factors.items():
        m = _wrap(model, path)
        m.add_lora(name, rank, a, dropout, rslora)
        with torch.no_grad():
            m.lora_A[name].weight.copy_(A)
            m.lora_B[name].weight.copy_(B)
    if full and _tied(model) and tie:
        t = full.get(EMBED, full.get(HEAD))
        shared = nn.Parameter(t.to(device=model.lm_head.weight.device, dtype=dtype))
        copies = {EMBED: shared, HEAD: shared}
    else:
        copies = {p: nn.Parameter(t.to(device=model.get_submodule(p).weight.device, dtype=dtype))
                  for p, t in full.items()}
    for path, copy in copies.items():
        _wrap(model, path).trained[name] = copy
    suffixes = sorted({p.rsplit(".", 1)[-1] for p in factors}, key=TARGET_CHOICES.index)
    trained = [t for t, p in TRAINABLE_PATHS.items() if p in copies and t not in suffixes]
    model.lora_adapters[name] = LoraConfig(
        r=r, alpha=alpha, dropout=dropout,
        target_modules=suffixes or list(LINEAR), trainable=trained, rslora=rslora)
    _train_only(model, name, trainable)
    return name

def adapter_names(model: nn.Module) -> list[str]:
    return list(getattr(model, "lora_adapters", {}))


def active_adapter(model: nn.Module) -> str | None:
    return getattr(model, "lora_active", None)


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make `name` the adapter every forward uses; None runs the base model alone."""
    if name is not None and name not in adapter_names(model):
        have = ", ".join(adapter_names(model)) or "none"
        raise UserError(f"no adapter named {name!r} on this model (it has: {have})")
    for _, m in adapted_modules(model):
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


def named_adapter(model: nn.Module, name: str | None) -> str:
    """`name` checked against the model's adapters; None: the active one (or the only one)."""
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
    name = named_adapter(model, name)
    for _, m in adapted_modules(model):
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
    for path, m in list(adapted_modules(model)):
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
    name = named_adapter(model, name)
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise UserError("cannot merge an adapter into int8/int4 weights: load the base model "
                        "without --quantize (its float weights), merge, then quantize the result")
    if any(isinstance(m, PackedLinear) for m in model.modules()):
        raise UserError("cannot merge an adapter into weights packed for decoding: load the "
                        "base model with open_model(pack=False), then merge")
    new: dict[str, torch.Tensor] = {}  # module path -> its merged weight
    for path, m in adapted_modules(model):
        w = m.trained[name] if name in m.trained else m.weight
        if isinstance(m, LoRALinear) and name in m.lora_A:
            w = (w.float() + m.delta(name).to(w.device)).to(w.dtype)
        if w is not m.weight:
            new[path] = w
    if _tied(model) and (EMBED in new or HEAD in new):
        embed = new.get(EMBED, model.model.embed_tokens.weight)
        head = new.get(HEAD, model.model.embed_tokens.weight)
        if head is embed:  # one shared trained copy: write it once, the tie stays
            new.pop(HEAD)
        else:
            was = model._lora_requires_grad.get(f"{EMBED}.weight", True)
            model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone(),
                                                requires_grad=was)
            model.config.tie_word_embeddings = False
    for path, w in new.items():
        model.get_submodule(path).weight.copy_(w)
    return unload(model)
