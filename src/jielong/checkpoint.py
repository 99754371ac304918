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
import math
import mmap
import os
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from jielong.config import ModelConfig
from jielong.errors import UserError
from jielong.files import atomic_dir, write_json
from jielong.model import Transformer, rope_frequencies
from jielong.quant import pack, prepare

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TRAINER_STATE = "trainer_state.pt"


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() without any adapter tensor: the base model's names only. A module
    that carries adapters (jielong.lora's wrappers) names the children that hold them in its
    `adapter_parts`; checkpoints know no more of adapters than that."""
    adapter = tuple(f"{path}.{part}." for path, m in model.named_modules()
                    for part in getattr(m, "adapter_parts", ()))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(adapter)}


def _weights_to_save(model: Transformer) -> dict[str, torch.Tensor]:
    # a model with adapters saves its base only
    sd = {k: v.detach().contiguous().cpu() for k, v in base_state_dict(model).items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # shared with embed_tokens; HF omits it too
    return sd


def save_weights(sd: dict[str, torch.Tensor], d: Path, max_shard_bytes: int) -> None:
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
    with atomic_dir(out) as tmp:
        cfg = model.config
        cfg.torch_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        cfg.save(tmp / "config.json")
        save_weights(_weights_to_save(model), tmp, max_shard_bytes)
        eos = [cfg.eos_token_id] if cfg.eos_token_id is not None else []
        if tokenizer is not None:  # end-of-turn tokens (<|im_end|>) end a reply too
            eos += sorted(tokenizer.end_ids - set(eos))
        gen = {"eos_token_id": eos if len(eos) > 1 else cfg.eos_token_id,
               "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id, **(generation or {})}
        write_json(tmp / "generation_config.json", gen)
        if tokenizer is not None:
            tokenizer.config["model_max_length"] = cfg.max_position_embeddings
            tokenizer.save(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
    return out


BIN_WEIGHTS, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def weight_files(d: Path) -> list[Path]:
    """The safetensors files of a model directory; else its pytorch_model*.bin files."""
    for index, single in ((INDEX, WEIGHTS), (BIN_INDEX, BIN_WEIGHTS)):
        if (d / index).exists():
            weight_map = _read_index(d / index)
            return [d / f for f in sorted(set(weight_map.values()))]
        if (d / single).exists():
            return [d / single]
    return []


def _read_index(path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a valid weight index ({e}); re-download the model") from None
    missing = sorted({f for f in weight_map.values() if not (path.parent / f).exists()})
    if missing:
        raise UserError(f"{path.parent / missing[0]}: shard listed in {path.name} is missing; "
                        "the download is incomplete, fetch the model again")
    return weight_map


def check_model_dir(path: str | Path) -> Path:
    d = Path(path)
    if not d.is_dir() and d.parts[:2] == ("runs", "demo"):  # a command's default model
        raise UserError(f"{d} does not exist: run `jielong demo` first, or pass --model "
                        "(a model directory or a Hugging Face hub id)")
    if not d.is_dir():
        raise UserError(f"{d}: no such model directory; pass a folder written by `jielong pretrain` "
                        "or a Hugging Face model directory (or a hub id such as Qwen/Qwen2.5-0.5B)")
    if not (d / "config.json").exists():
        raise UserError(f"{d}: not a model directory (no config.json); pass a folder written by "
                        "`jielong pretrain` or a Hugging Face model directory")
    if not weight_files(d):
        raise UserError(f"{d}: has no model.safetensors (or sharded safetensors with an index) "
                        "and no pytorch_model.bin")
    return d


# safetensors' dtype names (https://github.com/huggingface/safetensors, format section)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
              "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: Path):
    """Yield (name, tensor) from a .safetensors file, one tensor at a time.

    Each tensor is a read-only view of the memory-mapped file, valid only until the next
    one is asked for: copy it (into the model's dtype and device) before moving on. Once a
    tensor is passed, its pages are dropped from the mapping (MADV_DONTNEED), so the mapped
    file never adds more than one tensor to the process's memory — a plain mapped file keeps
    every page it touched resident until it is closed, a whole extra copy of a large shard.

    The format: an 8-byte little-endian header length, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the raw little-endian bytes.
    """
    def bad(why: str) -> UserError:
        return UserError(f"{path}: not a valid safetensors file ({why}); re-download or re-save it")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("shorter than its header")
        n = int.from_bytes(head, "little")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad(f"header: {e}") from None
        header.pop("__metadata__", None)
        size = os.fstat(f.fileno()).st_size
        # Not closed explicitly: the mapping goes when the last view of it does.
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if not all(isinstance(v, dict) and {"dtype", "shape", "data_offsets"} <= v.keys()
               for v in header.values()):
        raise bad("header entries need dtype, shape and data_offsets")
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if info["dtype"] not in _ST_DTYPES:
            raise bad(f"tensor {name} has dtype {info['dtype']}, which jielong does not load")
        dtype = _ST_DTYPES[info["dtype"]]
        begin, end = (8 + n + o for o in info["data_offsets"])
        count = math.prod(info["shape"])
        if end - begin != count * dtype.itemsize:
            raise bad(f"tensor {name}: {end - begin} bytes for shape {info['shape']}")
        if end > size:
            raise bad(f"truncated in tensor {name}")
        if count == 0:
            yield name, torch.empty(info["shape"], dtype=dtype)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": we only read
            raw = torch.frombuffer(mm, dtype=torch.uint8, count=end - begin, offset=begin)
        yield name, raw.view(dtype).reshape(info["shape"])
        del raw
        page = begin // mmap.PAGESIZE * mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, page, end - page)


def _read_bin(path: Path):
    print(f"note: {path.name} is a pickle file; loading it with torch.load(weights_only=True), "
          "which refuses anything but tensors. Prefer safetensors.", file=sys.stderr)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # an unpickling error names what was refused
        raise UserError(f"{path}: cannot load safely ({str(e).splitlines()[0]}); convert the "
                        "model to safetensors") from None
    yield from sd.items()


class NoInit(TorchFunctionMode):
    """Skip the in-place random initialisers modules run when built: on the meta device
    they do nothing useful, and the first one costs about a second of kernel setup."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in ("normal_", "uniform_", "kaiming_uniform_", "zero_",
                                             "zeros_", "ones_", "fill_"):
            return args[0] if args else next(iter(kwargs.values()))
        return func(*args, **kwargs)


def check_tensor(where, name: str, tensor, params: dict, kind: str) -> None:
    """A one-line UserError when the weights file's tensor `name` is not one of the model's
    parameters `params` (a `kind` built from config.json), or has another shape."""
    if name not in params:
        raise UserError(f"{where}: unexpected tensor {name!r} for a {kind} with this config.json")
    if tensor.shape != params[name].shape:
        raise UserError(f"{where}: tensor {name!r} has shape {tuple(tensor.shape)} but config.json "
                        f"implies {tuple(params[name].shape)}")


def resolve_dtype(dtype: str | torch.dtype, cfg, device: torch.device) -> torch.dtype:
    """The torch dtype for `dtype` (auto, float32, bfloat16, float16 or a torch dtype); auto
    is the checkpoint's own (`cfg.torch_dtype`) on a GPU, float32 on a CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":  # the checkpoint's own dtype on a GPU; float32 on a CPU
        dtype = cfg.torch_dtype if device.type == "cuda" else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype {dtype!r}: choose auto, float32, bfloat16 or float16")
    return getattr(torch, dtype)


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: str | torch.dtype = torch.float32) -> Transformer:
    """Build the model from `config.json` and fill it tensor by tensor, in `dtype`
    ("auto": the checkpoint's own on a GPU, float32 on a CPU). Peak memory stays near one
    copy of the model: it is built on the meta device (no memory), and each tensor is read,
    cast and moved before the next one is read."""
    d = check_model_dir(path)
    cfg = ModelConfig.load(d / "config.json")
    device = torch.device(device)
    dtype = resolve_dtype(dtype, cfg, device)
    with torch.device("meta"), NoInit():
        model = Transformer(cfg)
    if cfg.quantization_config is not None:  # int8/int4 weights written by `jielong quantize`
        prepare(model, cfg.quantization_config, str(d / "config.json"))
    params = dict(model.named_parameters())
    params.update((k, b) for k, b in model.named_buffers() if k in model.state_dict())
    # tensors a module keeps in a dtype of its own (a quantized layer's int8 weights and bf16
    # scales, `own_dtype`), like the buffers; every other parameter takes `dtype`
    own = {f"{path}.{n}" for path, m in model.named_modules() for n in getattr(m, "own_dtype", ())}
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(d):
        tensors = read_safetensors(f) if f.suffix == ".safetensors" else _read_bin(f)
        for k, t in tensors:
            if k.endswith("rotary_emb.inv_freq"):  # some old checkpoints saved this buffer
                continue
            check_tensor(f, k, t, params, f"{cfg.model_type} model")
            want = dtype if isinstance(params[k], nn.Parameter) and k not in own else params[k].dtype
            state[k] = torch.empty(t.shape, dtype=want, device=device)
            state[k].copy_(t)  # cast and move in one pass: no second copy on the CPU
            del t
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing = set(params) - set(state) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    if missing:
        raise UserError(f"{d}: weights are missing {len(missing)} tensors, e.g. {sorted(missing)[0]!r}")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings and isinstance(model.lm_head, nn.Linear):
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = rope_frequencies(cfg, device=device)[0]
    pack(model)
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
