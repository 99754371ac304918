"""Export: a model directory as one GGUF file for llama.cpp and Ollama.

    jielong export gguf runs/demo/model                    # -> runs/demo/model/gguf/model-f16.gguf
    jielong export gguf runs/demo/model --outtype q8_0 --out exports/
    ollama create demo -f runs/demo/model/gguf/Modelfile

GGUF is llama.cpp's one-file format: the hyperparameters and the tokenizer as key/value
metadata, then every tensor under llama.cpp's own name (`blk.0.attn_q.weight`, …). The key
names, the tensor-name map, the writer and the quantisers are the `gguf` package's (it is
llama.cpp's own Python library); what goes in is decided here:

- Architecture: Llama and Mistral run on llama.cpp's "llama" graph, Qwen2 on "qwen2",
  Qwen3 on "qwen3".
- Rotary layout: a Hugging Face checkpoint rotates the first half of each head against the
  second half (x[i] with x[i + d/2]); llama.cpp's "llama" graph rotates neighbours (x[2i]
  with x[2i+1]). So for "llama" the rows of q_proj and k_proj are reordered within each
  head (`permute_qk`); the Qwen graphs use the half-split ("NEOX") layout and take the rows
  as they are. A reordering of q and k rows by the same permutation leaves every q·k, and
  so the attention, unchanged.
- Precision: norms and biases stay f32 (as llama.cpp's converter keeps them); matrices are
  written in the chosen type: f32, f16, bf16, or q8_0 (8-bit blocks of 32 values with one
  f16 scale; a matrix whose rows are not a multiple of 32 falls back to f16).
- Tokenizer: tokenizer.json becomes llama.cpp's "gpt2" vocabulary (byte-level BPE: tokens,
  types and merges) or its "llama" one (SentencePiece-style: tokens, scores, types with
  the <0xNN> byte tokens), plus the special-token ids and the chat template.

Beside the .gguf goes an Ollama `Modelfile`: a Go-template TEMPLATE for the chat formats we
recognise (ChatML, Llama 3, Mistral [INST]), stop sequences and the sampling defaults of
generation_config.json. Tensors are read one at a time from the safetensors files and
written straight out, so the export needs memory for one tensor, not for the model.

The parts, in the order an export runs:
    gguf.py        `jielong export gguf`: check the folder, plan, write, print a summary
    hparams.py     config.json → llama.cpp's hyperparameters; the context a file may declare
    vocab.py       tokenizer.json (+ tokenizer_config.json) → llama.cpp's vocabulary
    tensors.py     HF tensor names → llama.cpp's, the rotary row order, each tensor's type
    gguf_file.py   the GGUF file itself: metadata, then the tensors one at a time
    modelfile.py   the Ollama Modelfile beside it
    jsonfile.py    reading the model folder's JSON files with clear errors
"""
