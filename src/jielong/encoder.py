"""A BERT-family bidirectional encoder and the sentence embeddings it makes, in one file.

BERT (Devlin et al. 2018) and XLM-RoBERTa (Conneau et al. 2019) are one network: token +
position + segment embeddings, then post-LayerNorm blocks of full (not causal) attention and
a GELU MLP. Parameter names are exactly transformers' `BertModel` / `XLMRobertaModel` names
(`encoder.layer.0.attention.self.query.weight`, …), so a Hugging Face folder loads as a state
dict, with or without the "bert." / "roberta." prefix a task model (`BertForMaskedLM`, …)
saves; task heads (`cls.*`, `lm_head.*`, …) are skipped, and the pooler is kept when the
file has one. The two differ only where transformers' code does: XLM-R numbers positions
from pad_token_id + 1 and skips padding (`create_position_ids_from_input_ids`, after
fairseq's `make_positions`), so it has max_position_embeddings - pad_token_id - 1 usable
positions (514 - 2 = 512).

What a model folder gives (the layouts of bge-small-zh, text2vec-base-chinese, m3e: BERT;
bge-m3: XLM-R):
- config.json: the sizes; model_type bert or xlm-roberta, hidden_act gelu, absolute
  positions; anything else is refused, named;
- model.safetensors (or shards with an index); never a pickle, never code from the folder;
- tokenizer.json through the `tokenizers` library (BERT's WordPiece and XLM-R's
  SentencePiece unigram both come as one), with its own [CLS]/<s> … [SEP]/</s> template;
- sentence-transformers' files, for how a text's vectors become one: modules.json lists
  Transformer → Pooling (its 1_Pooling/config.json sets pooling_mode_cls_token,
  _mean_tokens, _max_tokens or _lasttoken) → Normalize (L2) when the vectors are meant for
  cosine similarity; sentence_bert_config.json's max_seq_length and do_lower_case.
  Without modules.json the rule is CLS pooling, not normalised: the bge convention (BERT's
  [CLS] is the token its pretraining reads the whole text through). sentence-transformers
  itself would mean-pool a bare model; pass `pooling="mean"` for that. `pooling=` and
  `normalize=` override whatever the folder says.
`embed` then does what sentence-transformers' encode does: strip each text (lower-case it
with do_lower_case), cut it to max_seq_length tokens, batch texts of like length, pool in
float32; the vectors come back on the CPU in the texts' order.

    from jielong.encoder import Encoder
    enc = Encoder.load("models/bge-small-zh-v1.5")
    vectors = enc.embed(["今天天氣很好", "今天天气很好", "The weather is nice"])   # (3, 512)
    hidden = enc(input_ids, attention_mask)                                       # (B, T, 512)

Parity with transformers (hidden states within 1e-4, embeddings equal to pooling by hand)
is tests/test_encoder.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors
from torch import nn
from tqdm import tqdm

from jielong.checkpoint import NoInit, check_tensor, read_safetensors, resolve_dtype, weight_files
from jielong.errors import UserError, json_problem
from jielong.files import atomic_dir, write_json
from jielong.tokenizer import Tokenizer

MODEL_TYPES = {"bert": "bert.", "xlm-roberta": "roberta."}  # model_type -> task models' prefix
POOLINGS = ("cls", "mean", "max", "lasttoken")
# Heads that task models (ForMaskedLM, ForSequenceClassification, …) save beside the encoder.
HEADS = ("cls.", "lm_head.", "classifier.", "qa_outputs.")


@dataclass
class EncoderConfig:
    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    torch_dtype: str = "float32"

    @property
    def first_position(self) -> int:
        """XLM-R's positions start after the padding index; BERT's at 0."""
        return self.pad_token_id + 1 if self.model_type == "xlm-roberta" else 0

    @property
    def max_tokens(self) -> int:
        """The longest input, special tokens included, that has position embeddings."""
        return self.max_position_embeddings - self.first_position

    @classmethod
    def load(cls, path: Path) -> EncoderConfig:
        d = read_json(path, "a model directory needs a config.json")
        model_type, arch = d.get("model_type"), ", ".join(d.get("architectures") or []) or "?"
        if model_type not in MODEL_TYPES:
            raise UserError(f"{path}: model_type {model_type!r} ({arch}) is not an encoder jielong "
                            f"runs; it loads {', '.join(MODEL_TYPES)} (BertModel, XLMRobertaModel: "
                            "bge-small-zh, text2vec, m3e, bge-m3)")
        if d.get("hidden_act", "gelu") != "gelu":
            raise UserError(f"{path}: hidden_act {d['hidden_act']!r} is not supported; "
                            "jielong's encoder has the exact (erf) gelu of BERT and XLM-R")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise UserError(f"{path}: position_embedding_type {d['position_embedding_type']!r} "
                            "is not supported; jielong's encoder has absolute positions only")
        if "dtype" in d and "torch_dtype" not in d:  # transformers 5 writes "dtype"
            d["torch_dtype"] = d["dtype"]
        kw = {f.name: d[f.name] for f in fields(cls) if d.get(f.name) is not None}
        kw["torch_dtype"] = str(kw.get("torch_dtype", "float32")).removeprefix("torch.")
        cfg = cls(**kw)
        if cfg.hidden_size % cfg.num_attention_heads:
            raise UserError(f"{path}: hidden_size {cfg.hidden_size} is not a multiple of "
                            f"num_attention_heads {cfg.num_attention_heads}")
        return cfg


# ---------------------------------------------------------------------------------- model


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, input_ids, positions, token_type_ids):
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings(token_type_ids))


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h = cfg.hidden_size
        self.n_head = cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # every token sees all keys
        return y.transpose(1, 2).reshape(B, T, C)


class AddNorm(nn.Module):
    """A projection added to the residual, then LayerNorm: BERT normalises after the sum
    (post-LN), where Llama normalises each block's input."""

    def __init__(self, d_in: int, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h = cfg.hidden_size
        self.attention = nn.ModuleDict({"self": SelfAttention(cfg), "output": AddNorm(h, cfg)})
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(h, cfg.intermediate_size)})
        self.output = AddNorm(cfg.intermediate_size, cfg)

    def forward(self, x, mask):
        x = self.attention["output"](self.attention["self"](x, mask), x)
        return self.output(F.gelu(self.intermediate["dense"](x)), x)


class Pooler(nn.Module):
    """BERT's next-sentence head input: tanh(dense([CLS])). Not what sentence embeddings use
    (those are `Encoder.pool`'s); kept so a folder's weights load whole."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class Encoder(nn.Module):
    """The encoder network; after `Encoder.load` also its tokenizer and pooling, for `embed`."""

    def __init__(self, cfg: EncoderConfig, pooler: bool = False):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))})
        self.pooler = Pooler(cfg) if pooler else None
        self.tokenizer: Tokenizer | None = None
        self.pooling, self.normalize = "cls", False
        self.max_length, self.lower_case = cfg.max_tokens, False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden states (B, T, hidden). attention_mask: (B, T), 1 for a token and 0
        for padding (the padded positions get states too, which nothing should read)."""
        B, T = input_ids.shape
        cfg = self.config
        if T > cfg.max_tokens:
            raise ValueError(f"{T} tokens is longer than the model's {cfg.max_tokens} positions")
        if cfg.model_type == "xlm-roberta":  # count real tokens only; padding sits at pad_token_id
            real = input_ids.ne(cfg.pad_token_id).long()
            positions = real.cumsum(1) * real + cfg.pad_token_id
        else:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, positions, token_type_ids)
        # Boolean mask over keys, (B, 1, 1, T): a query never reads a padded key.
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.encoder["layer"]:
            x = layer(x, mask)
        return x

    # -- sentence embeddings ---------------------------------------------------------------

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per text from its token states (B, T, d), as sentence-transformers'
        Pooling computes it, then L2-normalised if the model says so. In float32."""
        h, m = hidden.float(), attention_mask.to(hidden.device)[..., None].float()
        if self.pooling == "cls":
            v = h[:, 0]
        elif self.pooling == "mean":
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        elif self.pooling == "max":
            v = h.masked_fill(m == 0, -1e9).max(1).values
        else:  # lasttoken: the last real token of a right-padded row
            v = h[torch.arange(len(h)), m[..., 0].sum(1).long() - 1]
        return F.normalize(v, p=2, dim=-1) if self.normalize else v

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32, max_length: int | None = None,
              progress: bool = False) -> torch.Tensor:
        """(len(texts), d) float32 vectors on the CPU: tokenized with the special tokens,
        cut to `max_length` tokens (default: the folder's max_seq_length, else 512; never past
        the position table), batched by length so little is padding, pooled as declared."""
        if self.tokenizer is None:
            raise UserError("this encoder has no tokenizer; open the model with Encoder.load(DIR)")
        backend = self.tokenizer.backend
        limit = min(max_length or self.max_length, self.config.max_tokens)
        backend.no_padding()
        backend.enable_truncation(limit)  # counts the [CLS]/[SEP] the template adds
        texts = [t.strip() for t in texts]  # as sentence-transformers does before tokenizing
        texts = [t.lower() for t in texts] if self.lower_case else texts
        encodings = backend.encode_batch(texts, add_special_tokens=True)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        device = next(self.parameters()).device
        out = torch.empty(len(texts), self.config.hidden_size)
        for start in tqdm(range(0, len(order), batch_size), desc="embedding", unit="batch",
                          disable=not progress):
            rows = order[start:start + batch_size]
            T = max(len(encodings[i].ids) for i in rows)
            ids = torch.full((len(rows), T), self.config.pad_token_id)
            types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
            for r, i in enumerate(rows):
                e = encodings[i]
                ids[r, :len(e.ids)], types[r, :len(e.ids)] = torch.tensor(e.ids), torch.tensor(e.type_ids)
                mask[r, :len(e.ids)] = 1
            ids, types, mask = ids.to(device), types.to(device), mask.to(device)
            out[rows] = self.pool(self(ids, mask, types), mask).cpu()
        return out

    # -- files ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             dtype: str | torch.dtype = torch.float32, pooling: str | None = None,
             normalize: bool | None = None) -> Encoder:
        """A Hugging Face BERT / XLM-R folder with its tokenizer and declared pooling.
        dtype: a torch dtype or float32 / bfloat16 / float16 / auto (the checkpoint's own on
        a GPU, float32 on a CPU). pooling (cls, mean, max, lasttoken) and normalize override
        the folder's sentence-transformers files."""
        if pooling is not None and pooling not in POOLINGS:
            raise UserError(f"pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        d = Path(path)
        if not d.is_dir():
            raise UserError(f"{d}: no such model directory; pass a Hugging Face BERT or XLM-R "
                            "folder (config.json, model.safetensors, tokenizer.json)")
        cfg = EncoderConfig.load(d / "config.json")
        device = torch.device(device)
        dtype = resolve_dtype(dtype, cfg, device)
        files = [f for f in weight_files(d) if f.suffix == ".safetensors"]
        if not files:
            raise UserError(f"{d}: no model.safetensors (or shards with an index); jielong never "
                            "loads pickles for an encoder: convert pytorch_model.bin to safetensors")
        prefix = MODEL_TYPES[cfg.model_type]
        state = {}
        for f in files:
            for k, t in read_safetensors(f):
                k = k.removeprefix(prefix)
                if k.startswith(HEADS) or k.endswith(("position_ids", "token_type_ids")):
                    continue  # task heads, and buffers that old checkpoints saved
                state[k] = torch.empty(t.shape, dtype=dtype, device=device)
                state[k].copy_(t)
        with torch.device("meta"), NoInit():
            model = cls(cfg, pooler="pooler.dense.weight" in state)
        params = dict(model.named_parameters())
        for k, t in state.items():
            check_tensor(d, k, t, params, f"{cfg.model_type} encoder")
        missing = sorted(set(params) - set(state))
        if missing:
            raise UserError(f"{d}: weights are missing {len(missing)} tensors, e.g. {missing[0]!r}")
        model.load_state_dict(state, assign=True)
        model.tokenizer = Tokenizer.from_dir(d)
        model.pooling, model.normalize, max_seq, model.lower_case = read_pooling(d, pooling)
        model.max_length = min(max_seq or 512, cfg.max_tokens)
        if normalize is not None:
            model.normalize = normalize
        return model.eval()


    def save(self, path: str | Path, extra: dict[str, torch.Tensor] | None = None,
             config: dict | None = None, prefix: str = "") -> Path:
        """Write a folder that `Encoder.load` and transformers' `BertModel` /
        `XLMRobertaModel` (and sentence-transformers) read back: config.json,
        model.safetensors (transformers' names, no prefix), the tokenizer, and
        sentence-transformers' modules.json + 1_Pooling/config.json (+ Normalize) declaring
        this encoder's pooling. `extra` tensors (a task head) and `config` keys are added,
        and `prefix` ("bert." / "roberta.") goes before the encoder's own names, as a task
        model (…ForSequenceClassification) saves them; written atomically."""
        cfg = self.config
        arch = {"bert": "BertModel", "xlm-roberta": "XLMRobertaModel"}[cfg.model_type]
        state = {prefix + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        state.update({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in (extra or {}).items()})
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        keys = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens", "lasttoken": "lasttoken"}
        with atomic_dir(path) as d:
            write_json(d / "config.json", {**asdict(cfg), "torch_dtype": "float32",
                                           "architectures": [arch], **(config or {})})
            save_file(state, d / "model.safetensors", metadata={"format": "pt"})
            if self.tokenizer is not None:  # without the truncation `embed` set on it
                self.tokenizer.backend.no_truncation()
                self.tokenizer.backend.no_padding()
                self.tokenizer.save(d)
            write_json(d / "modules.json", modules)
            (d / "1_Pooling").mkdir()
            write_json(d / "1_Pooling" / "config.json", {"word_embedding_dimension": cfg.hidden_size} | {
                f"pooling_mode_{key}": mode == self.pooling for mode, key in keys.items()})
            write_json(d / "sentence_bert_config.json", {"max_seq_length": self.max_length,
                                                         "do_lower_case": self.lower_case})
            if self.normalize:
                (d / "2_Normalize").mkdir()
        return Path(path)


def read_pooling(d: Path, pooling: str | None = None) -> tuple[str, bool, int | None, bool]:
    """(pooling, normalize, max_seq_length, do_lower_case) from a folder's sentence-transformers
    files; ("cls", False, None, False) without them (see the module docstring). A `pooling`
    given wins over the folder's, even one jielong does not run."""
    declared, normalize, max_seq, lower = "cls", False, None, False
    if (d / "sentence_bert_config.json").is_file():
        st = read_json(d / "sentence_bert_config.json")
        max_seq, lower = st.get("max_seq_length"), bool(st.get("do_lower_case"))
    if not (d / "modules.json").is_file():
        return pooling or declared, normalize, max_seq, lower
    modules = read_json(d / "modules.json")
    if not isinstance(modules, list):
        raise UserError(f"{d / 'modules.json'}: must be a list of modules")
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]  # sentence_transformers.models.Pooling
        if kind == "Pooling" and pooling is None:
            p = read_json(d / m.get("path", "") / "config.json")
            modes = [name for name, key in (("cls", "cls_token"), ("mean", "mean_tokens"),
                                            ("max", "max_tokens"), ("lasttoken", "lasttoken"),
                                            ("mean_sqrt_len", "mean_sqrt_len_tokens"),
                                            ("weightedmean", "weightedmean_tokens"))
                     if p.get(f"pooling_mode_{key}")]
            if len(modes) != 1 or modes[0] not in POOLINGS:
                raise UserError(f"{d / m.get('path', '')}/config.json: pooling "
                                f"{'+'.join(modes) or 'none'} is not supported; jielong pools "
                                f"one way ({', '.join(POOLINGS)}): pass pooling= to choose one")
            declared = modes[0]
        elif kind == "Normalize":
            normalize = True
        elif kind not in ("Transformer", "Pooling"):
            raise UserError(f"{d / 'modules.json'}: module {m.get('type')!r} is not supported; "
                            "jielong's encoder runs Transformer, Pooling and Normalize")
    return pooling or declared, normalize, max_seq, lower


def read_json(path: Path, needed_for: str = ""):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found" + (f"; {needed_for}" if needed_for else "")) from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({json_problem(e)}); fix or "
                        "re-download the file") from None



BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def char_wordpiece(texts: list[str], words: bool = True) -> Tokenizer:
    """A BERT WordPiece tokenizer whose vocabulary is the characters of `texts` (each Han
    character a token, as bert-base-chinese splits Chinese; ##c for a character inside a word)
    and, with `words`, their whole lower-cased words: for an encoder trained from nothing, where
    no pretrained vocabulary can be downloaded."""
    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    chars = sorted({c for t in texts for c in t.lower() if not c.isspace()})
    found = sorted({w for t in texts for w, _ in split(t.lower())}) if words else []
    vocab = list(dict.fromkeys(BERT_SPECIALS + found + chars + [f"##{c}" for c in chars]))
    tok = Backend(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(BERT_SPECIALS)
    return Tokenizer(tok)


def random_encoder(tok: Tokenizer, out: Path, hidden: int = 32, layers: int = 2,
                   intermediate: int | None = None, max_positions: int = 512,
                   pooling: str = "cls", pooler: bool = False, seed: int = 0) -> Path:
    """A randomly initialised BERT folder for `tok` (BERT's N(0, 0.02) init, not nn.Embedding's
    N(0, 1)), saved with its pooling and normalised vectors: the start of `jielong train embed`
    from nothing, and the tests' tiny encoder."""
    cfg = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=intermediate or 4 * hidden,
                        max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    enc = Encoder(cfg, pooler=pooler)
    with torch.no_grad():
        for p in enc.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    enc.tokenizer, enc.pooling, enc.normalize = tok, pooling, True
    return enc.save(out)
