"""`jielong export gguf`: a model directory as one GGUF file for llama.cpp and Ollama.

Run as:
    jielong export gguf runs/demo/model                    # -> runs/demo/model/gguf/model-f16.gguf
    jielong export gguf runs/demo/model --outtype q8_0 --out exports/

then `ollama create demo -f runs/demo/model/gguf/Modelfile` to run it in Ollama.

What goes into the file and why: see `jielong.export`.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from safetensors import safe_open

from jielong.checkpoint import check_model_dir, weight_files
from jielong.errors import UserError
from jielong.export.gguf_file import load_gguf, write_gguf
from jielong.export.hparams import declared_context, read_hparams
from jielong.export.jsonfile import optional_json
from jielong.export.modelfile import ollama_modelfile, ollama_name
from jielong.export.tensors import OUTTYPES, plan_tensors
from jielong.export.vocab import read_vocab
from jielong.files import write_text


def output_path(d: Path, out: str | Path | None, outtype: str) -> Path:
    """Where the .gguf goes: `out` itself if it names one, else DIR-OUTTYPE.gguf in `out`
    (default: the model folder's gguf/)."""
    name = f"{d.resolve().name}-{outtype}.gguf"
    if out is None:
        return d / "gguf" / name
    out = Path(out)
    return out if out.suffix.lower() == ".gguf" else out / name


def export_gguf(model_dir: str | Path, out: str | Path | None = None, outtype: str = "f16",
                context_length: int | None = None) -> Path:
    """Write `model_dir` (a Llama / Mistral / Qwen2 / Qwen3 Hugging Face directory) as one
    GGUF file for llama.cpp and Ollama, with an Ollama `Modelfile` beside it. `out` is a
    .gguf path or a folder (default: MODEL_DIR/gguf/); `context_length` caps the context the
    file declares (default: the model's); returns the .gguf path."""
    if outtype not in OUTTYPES:
        raise UserError(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}; "
                        "pass --outtype f16 (or f32, bf16, q8_0)")
    d = check_model_dir(model_dir)
    gguf = load_gguf()
    hp = read_hparams(d)
    hp.context_length = declared_context(hp, d / "config.json", context_length)
    generation = optional_json(d / "generation_config.json")
    try:
        vocab = read_vocab(d, hp.vocab_size, hp.config, generation)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a hand-edited file
        raise UserError(f"{d / 'tokenizer.json'}: unexpected content ({type(e).__name__}: {e}); "
                        "re-save the tokenizer with `tokenizers` or transformers") from None
    path = output_path(d, out, outtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = d.resolve().name

    with ExitStack() as stack:
        shards = []
        for f in weight_files(d):
            if f.suffix != ".safetensors":
                raise UserError(f"{f}: GGUF export reads safetensors weights only; convert the "
                                "model first (load it and save it with jielong or "
                                "save_pretrained(safe_serialization=True))")
            try:
                shards.append((f, stack.enter_context(safe_open(str(f), framework="pt"))))
            except Exception as e:  # missing shard, truncated or not safetensors
                raise UserError(f"{f}: cannot read this safetensors file ({e}); re-save the "
                                "model") from None
        plan = plan_tensors(gguf, hp, shards, outtype)
        write_gguf(path, gguf, hp, vocab, plan, name, outtype, generation)

    modelfile = path.parent / "Modelfile"
    write_text(modelfile, ollama_modelfile(path.name, vocab, generation, hp.context_length))
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB, {len(plan)} tensors, {outtype}) and {modelfile}; "
          f"for Ollama: ollama create {ollama_name(name)} -f {modelfile}")
    return path


def gguf_cmd(model: str, out: str | None = None,
             outtype: Literal["f32", "f16", "bf16", "q8_0"] = "f16",
             context_length: int | None = None) -> None:
    """Export a model as one GGUF file for llama.cpp and Ollama, with an Ollama Modelfile.

    Args:
        model: A model folder (config.json, safetensors weights, tokenizer.json) of a Llama,
            Mistral, Qwen2 or Qwen3 model, e.g. one written by `jielong pretrain`.
        out: A .gguf file to write, or a folder for MODEL-OUTTYPE.gguf (default: MODEL/gguf/).
        outtype: Tensor type: f32, f16, bf16, or q8_0 (8-bit, about half the size of f16).
        context_length: The context the file declares (default: the model's). A model with a
            sliding window (Mistral v0.1, some Qwen) needs one no longer than the window:
            llama.cpp attends over the whole context for these architectures.
    """
    export_gguf(model, out, outtype, context_length)
