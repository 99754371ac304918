"""The GGUF file itself: hyperparameters and vocabulary as metadata, then every tensor.

The key names, the writer and the quantisers are the `gguf` package's (llama.cpp's own
Python library, the optional extra jielong[export]).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jielong.errors import UserError
from jielong.export.hparams import Hparams
from jielong.export.tensors import PlannedTensor, encode
from jielong.export.vocab import Vocab
from jielong.files import atomic_path


def load_gguf():
    """The `gguf` package, or a clear error saying how to install it."""
    try:  # an optional extra: only export needs it
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the `gguf` package, which is not installed; "
                        "install it with: pip install 'jielong[export]'") from None
    return gguf


# --outtype -> gguf.LlamaFileType's name for it
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def add_metadata(w, gguf, hp: Hparams, vocab: Vocab, name: str, outtype: str,
                 generation: dict) -> None:
    """Hyperparameters, vocabulary and sampling defaults as the file's key/value metadata."""
    w.add_name(name)
    w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[outtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(hp.vocab_size)
    w.add_context_length(hp.context_length)
    w.add_embedding_length(hp.hidden_size)
    w.add_block_count(hp.num_layers)
    w.add_feed_forward_length(hp.intermediate_size)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_kv_head)
    w.add_key_length(hp.head_dim)
    w.add_value_length(hp.head_dim)
    w.add_layer_norm_rms_eps(hp.rms_norm_eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_rope_dimension_count(hp.head_dim)
    rope = hp.rope_scaling
    if rope:
        kind = rope["rope_type"]
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope.get("factor", 1.0)))
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(rope.get("factor", 1.0)))
            w.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings")
                                                or hp.context_length))
        # llama3: written as the rope_freqs.weight tensor instead (see plan_tensors).

    w.add_tokenizer_model(vocab.model)
    if vocab.pre:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "pad": w.add_pad_token_id,
              "unk": w.add_unk_token_id, "eot": w.add_eot_token_id}
    for key, token_id in vocab.special.items():
        adders[key](token_id)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)

    # Sampling defaults (llama.cpp reads general.sampling.*; Ollama takes the Modelfile's).
    if isinstance(generation.get("temperature"), int | float) and generation.get("do_sample") is not False:
        w.add_sampling_temp(float(generation["temperature"]))
    if isinstance(generation.get("top_p"), int | float):
        w.add_sampling_top_p(float(generation["top_p"]))
    if isinstance(generation.get("top_k"), int) and not isinstance(generation.get("top_k"), bool):
        w.add_sampling_top_k(generation["top_k"])


def write_gguf(path: Path, gguf, hp: Hparams, vocab: Vocab, plan: list[PlannedTensor],
               name: str, outtype: str, generation: dict) -> None:
    """Write the GGUF file at `path`, atomically: metadata, then the tensors of `plan`."""
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, hp.arch)
        try:
            add_metadata(w, gguf, hp, vocab, name, outtype, generation)
            # Two passes: the header lists every tensor's shape and size first, then the
            # data follows one tensor at a time, so only one is ever in memory.
            for t in plan:
                nbytes = math.prod(gguf.quants.quant_shape_to_byte_shape(t.shape, t.qtype))
                w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes,
                                  raw_dtype=t.qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for t in tqdm(plan, desc="export gguf", unit="tensor", disable=None, leave=False):
                w.write_tensor_data(encode(gguf, t.load(), t.qtype))
        finally:
            w.close()
