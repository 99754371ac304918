"""Hugging Face model directories from anywhere: a local folder or a hub id.

    from jielong.hub import open_model
    model, tok, gen = open_model("Qwen/Qwen2.5-0.5B-Instruct", dtype="auto")

What jielong reads from a model folder, and what it never does:
- config.json → `ModelConfig.from_hf` (Llama 2/3 incl. rope scaling, Mistral, Qwen2/2.5,
  Qwen3; anything else is refused with the list of supported families);
- *.safetensors (single or sharded with an index) → `checkpoint.load_model`; a
  pytorch_model.bin only through `torch.load(weights_only=True)`, with a note;
- tokenizer.json + tokenizer_config.json (+ chat_template.jinja) → `Tokenizer.from_dir`;
- generation_config.json → default sampling and the ids that end a reply;
- LoRA adapters (PEFT folders, `jielong.adapter_files`), as many as asked, on one shared
  base: `open_model(dir, adapters=["chat=runs/chat/adapter", "runs/poem/adapter"])`, then
  `set_adapter` / `using_adapter` (or `choose_adapter`) picks one per call.
Python files in a model folder (`trust_remote_code`) are never imported or run.

- `quantize="int8"|"int4"`: the decoder's linear layers as weight-only quantized layers
  (jielong.quant), before any adapter is loaded, so the adapters run on top of them.

`jielong merge` opens a base and an adapter the same way and saves them folded into one
model folder; `jielong quantize` saves a quantized copy that loads again. Run as:

    jielong merge BASE_DIR_OR_HUB_ID runs/chat/adapter runs/chat/merged
    jielong quantize runs/demo/model --to int8 --out runs/demo/model-int8
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from jielong.adapter_files import alpha_json, load_adapter, read_adapter_config
from jielong.checkpoint import load_model, save_model, weight_files
from jielong.errors import UserError, json_problem
from jielong.lora import (
    TRAINABLE_CHOICES,
    TRAINABLE_PATHS,
    LoRALinear,
    adapted_modules,
    adapter_names,
    merge_adapter,
    set_adapter,
)
from jielong.quant import check_method, pack_linears, quantize, weight_bytes
from jielong.tokenizer import Tokenizer

# What to fetch from the hub: weights in safetensors, configs, tokenizer files.
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


def resolve_model(name: str | Path) -> Path:
    """A local model directory for `name`: the folder itself, or a hub id (`org/model`)
    downloaded (or found in the local cache) with huggingface_hub."""
    p = Path(name)
    if p.exists() or str(name).startswith((".", "/", "~")) or str(name).count("/") != 1:
        return p.expanduser()
    try:  # an optional extra (jielong[hub]): only a hub id needs it
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise UserError(f"{name}: not a local folder, and huggingface_hub is not installed to "
                        "download it; pip install 'jielong[hub]' or pass a local directory") \
            from None
    try:
        path = Path(snapshot_download(str(name), allow_patterns=_HUB_FILES))
        if not any(path.glob("*.safetensors")):  # an old repo with pickle weights only
            path = Path(snapshot_download(str(name), allow_patterns=_HUB_FILES + ["*.bin"]))
    except LocalEntryNotFoundError:
        raise UserError(f"{name}: not a local folder, not in the Hugging Face cache, and the hub "
                        "cannot be reached (offline?); download it when online or pass a local "
                        "directory") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {401: "it may be gated or private: accept its license on the hub and set HF_TOKEN",
                403: "it is gated: accept its license on the hub and set HF_TOKEN",
                404: "no such model on the hub; check the name"}.get(status, str(e).splitlines()[0])
        raise UserError(f"{name}: could not download from the Hugging Face hub: {hint}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{name}: could not download from the Hugging Face hub: "
                        f"{str(e).splitlines()[0]}") from None
    return path


def read_generation_config(model_dir: str | Path) -> dict:
    """generation_config.json as a dict ({} when the folder has none)."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({json_problem(e)}); fix or delete it") from None


def stop_ids(tok, generation: dict, config_eos: int | None = None) -> set[int]:
    """Token ids that end a reply: generation_config's eos ids (one or a list), the model
    config's eos id, and the tokenizer's eos and end-of-turn tokens."""
    eos = generation.get("eos_token_id")
    ids = set(eos if isinstance(eos, list) else [eos]) | {config_eos} | tok.end_ids
    return {i for i in ids if isinstance(i, int)}


BASE = ("none", "off")  # adapter names that mean the base model alone


def adapter_specs(specs: list[str] | None) -> dict[str, Path]:
    """{name: folder} from `--adapter` values, each `NAME=DIR` or just `DIR` (then named after
    the folder, or after its parent for a folder called `adapter`, which is where
    `jielong train sft --method lora` writes runs/NAME/adapter). Each folder's
    adapter_config.json is checked here, before a possibly large model is loaded."""
    out: dict[str, Path] = {}
    for spec in specs or []:
        name, eq, path = spec.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            name, path = "", spec
        d = resolve_model(path)
        if not name:
            p = d.resolve() if d.exists() else Path(path)
            name = re.sub(r"[^A-Za-z0-9_-]", "_", p.parent.name if p.name == "adapter" else p.name)
        if name.lower() in BASE or not name:
            raise UserError(f"--adapter {spec}: give it a name, as in --adapter NAME={path}"
                            + (f" ({name!r} means the base model)" if name else ""))
        if name in out:
            raise UserError(f"--adapter {spec}: a second adapter named {name!r}; name them "
                            "apart, as in --adapter a=DIR1 b=DIR2")
        read_adapter_config(d)
        out[name] = d
    return out


def _pick(name: str | None, have) -> str | None:
    """`name` checked against the loaded adapter names `have`; None for the base model."""
    if name is None or name.lower() in BASE:
        return None
    if name not in have:
        raise UserError(f"no adapter named {name!r}; loaded: {', '.join(have) or 'none'}; "
                        "off: the base model alone")
    return name


def choose_adapter(model, name: str | None) -> str | None:
    """Make adapter `name` the active one (None, "none" or "off": the base model alone) and
    return it, or say which adapters there are."""
    name = _pick(name, adapter_names(model))
    set_adapter(model, name)
    return name


def _note_other_base(model_name, adapter_dir: Path, conf: dict) -> None:
    """Say so when an adapter names another base model (its shapes fit: it may still work)."""
    base = conf.get("base_model_name_or_path")
    if base and Path(str(base)).name.lower() != Path(str(model_name)).resolve().name.lower():
        print(f"note: adapter {adapter_dir} was trained on {base}; using it on {model_name}",
              file=sys.stderr)


def open_model(name: str | Path, device: str | torch.device = "cpu", dtype="auto",
               adapters: list[str] | None = None, adapter_name: str | None = None,
               quantize: str | None = None, pack: bool | int = False):
    """(model, tokenizer, generation_config) from a folder or hub id, with the LoRA adapters
    `adapters` loaded (see `adapter_specs`) and `adapter_name` active (default: the first;
    "off": the base model alone), on weights quantized to `quantize` (int8, int4; None: as
    stored). `pack`: a model that only decodes, on a CPU, gets its float linear weights
    reordered for oneDNN's matmul (jielong.quant.pack_linears: faster, not trainable); an int
    is the rows a call will mostly have (1: one sequence), True: any."""
    method = check_method(quantize)
    specs = adapter_specs(adapters)
    active = _pick(adapter_name, list(specs)) if adapter_name else next(iter(specs), None)
    path = resolve_model(name)
    model = load_model(path, device=device, dtype=dtype).eval()
    if method is not None:
        _quantize(model, method, name)
    if pack is not False:
        pack_linears(model, None if pack is True else pack)
    tok = Tokenizer.from_dir(path)
    for n, d in specs.items():
        load_adapter(model, d, name=n)
        _note_other_base(name, d, read_adapter_config(d))
    if specs:
        set_adapter(model, active)
    return model, tok, read_generation_config(path)


def _quantize(model, method: str, name) -> None:
    have = (model.config.quantization_config or {}).get("weights")
    if have and have != method:
        raise UserError(f"{name}: is already quantized to {have}; leave out --quantize, or "
                        f"quantize its float weights to {method} instead")
    quantize(model, method)


# ----------------------------------------------------------------------------- jielong merge

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
    n_lora = sum(1 for _, m in adapted_modules(net)
                 if isinstance(m, LoRALinear) and name in m.lora_A)
    full = [t for t in TRAINABLE_CHOICES if any(p == TRAINABLE_PATHS[t] and name in m.trained
                                                 for p, m in adapted_modules(net))]
    merge_adapter(net, name)
    dtype = net.config.torch_dtype if net.config.torch_dtype in ("bfloat16", "float16") \
        else "float32"
    net.to(getattr(torch, dtype))
    save_model(out_dir, net, tok, generation=read_generation_config(base_dir))
    extra = f" + trained {', '.join(full)}" if full else ""
    print(f"merged {adapter} (LoRA r={cfg.r}, alpha={alpha_json(cfg.alpha)} on {n_lora} "
          f"linear layers{extra}) into {model} → {out_dir} "
          f"({net.config.num_params / 1e6:.1f}M parameters, {dtype})")



# ----------------------------------------------------------------------------- jielong quantize

def quantize_cmd(model: str, to: str = "int8", out: str | None = None,
                 group_size: int = 128) -> None:
    """Save a copy of a model with weight-only int8 or int4 linear layers (jielong.quant).

    The folder loads again wherever jielong opens a model (generate, chat, serve, eval,
    --adapter on top); safetensors only. Other libraries do not read it: keep the float
    model for them, or use `jielong export gguf --outtype q8_0` for llama.cpp.

    Args:
        model: the float model: a folder (from jielong or Hugging Face) or a hub id
        to: int8 (one scale per output channel) or int4 (grouped scales and zeros)
        out: folder to write the quantized model to (replaced atomically if it exists;
            default: MODEL-int8 or MODEL-int4 beside the model)
        group_size: inputs sharing one int4 scale: 32, 64, 128 or 256
    """
    method = check_method(to, "--to")
    if method is None:
        raise UserError(f"--to {to}: choose int8 or int4")
    src = resolve_model(model)
    out = out or str(src.parent / f"{src.name}-{method}")
    if Path(out).resolve() == src.resolve():
        raise UserError(f"{out}: is the model's own folder; write the quantized model elsewhere")
    net = load_model(src, dtype=torch.float32).eval()
    if net.config.quantization_config:
        raise UserError(f"{model}: is already quantized "
                        f"({net.config.quantization_config.get('weights')}); quantize its float "
                        "weights instead")
    fp32 = weight_bytes(net)
    quantize(net, method, group_size)
    tok = Tokenizer.from_dir(src) if (src / "tokenizer.json").is_file() else None
    save_model(out, net, tok, generation=read_generation_config(src))
    disk = sum(f.stat().st_size for f in weight_files(Path(out)))
    print(f"quantized {model} to {method}"
          + (f" (groups of {group_size})" if method == "int4" else "")
          + f" → {out}: {disk / 1e6:.1f} MB of weights on disk, {weight_bytes(net) / 1e6:.1f} MB "
          f"in memory (float32: {fp32 / 1e6:.1f} MB, {disk / fp32:.2f}×)")
