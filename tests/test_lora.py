"""LoRA adapters in PEFT's format, with transformers + PEFT as the numerical reference.

Adapters go both ways: jielong's `save_adapter` output is applied by
`peft.PeftModel.from_pretrained` on transformers' model of the same base, and adapters PEFT
itself made (`get_peft_model` + `save_pretrained`) load with `load_adapter`; the logits must
agree to 1e-4 either way.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_corpus
from safetensors import safe_open
from torch import nn

from jielong import lora
from jielong.adapter_files import load_adapter, lora_state_dict, save_adapter
from jielong.checkpoint import base_state_dict, load_model, save_model
from jielong.cli import run
from jielong.config import preset
from jielong.errors import UserError
from jielong.hub import merge_cmd
from jielong.lora import (
    LoraConfig,
    LoRALinear,
    TrainableEmbedding,
    adapter_names,
    add_adapter,
    count_parameters,
    merge_adapter,
    remove_adapter,
    set_adapter,
    using_adapter,
)
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.losses import linear_cross_entropy

VOCAB = 320
TOL = 1e-4


def tiny(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(preset("test", vocab_size=VOCAB, **kw)).eval()


def ids(seed: int = 1, shape=(2, 19)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomise(model: nn.Module, name: str = "default", seed: int = 3) -> None:
    """Give adapter `name` non-zero B factors and move its trained copies off the base."""
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        parts = n.split(".")
        if any(parts[i] in ("lora_B", "trained") and parts[i + 1] == name
               for i in range(len(parts) - 1)):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@torch.no_grad()
def logits(model, x=None) -> torch.Tensor:
    return model(ids() if x is None else x)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def wrappers(model) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, LoRALinear | TrainableEmbedding)]


# --------------------------------------------------------------------- PEFT / transformers

def _peft():
    return pytest.importorskip("peft")


def hf_model(d):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def peft_apply(base_dir, adapter_dir):
    """transformers' base model with PEFT's own loading of the adapter; PEFT must not report
    missing or unexpected keys."""
    peft = _peft()
    hf = hf_model(base_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(hf, str(adapter_dir)).eval()
    complaints = [str(w.message) for w in caught
                  if any(s in str(w.message).lower() for s in ("missing", "unexpected"))]
    assert not complaints, complaints
    return pm


@torch.no_grad()
def hf_logits(model, x=None) -> torch.Tensor:
    return model(input_ids=ids() if x is None else x).logits


# --------------------------------------------------------------------- the layer itself

def test_fresh_adapter_changes_nothing_keeps_base_names_and_parameters():
    model = tiny(tie_word_embeddings=False)
    before = logits(model)
    keys = list(model.state_dict())
    q = model.model.layers[0].self_attn.q_proj
    w = q.weight
    add_adapter(model, LoraConfig(r=4, alpha=8))
    new_q = model.model.layers[0].self_attn.q_proj
    assert isinstance(new_q, LoRALinear) and new_q.weight is w  # the same Parameter object
    assert torch.equal(logits(model), before)  # B = 0: exactly the base
    assert list(base_state_dict(model)) == keys
    assert "model.layers.0.self_attn.q_proj.lora_A.default.weight" in model.state_dict()
    a = new_q.lora_A["default"].weight
    bound = 1 / a.shape[1] ** 0.5  # kaiming_uniform(a=√5) on (r, in): U(-1/√in, 1/√in)
    assert a.abs().max() <= bound and a.std() > bound / 3
    randomise(model)
    assert max_diff(logits(model), before) > 1e-3
    set_adapter(model, None)
    assert torch.equal(logits(model), before)


def test_lora_linear_forward_is_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    m = LoRALinear(base)
    m.add_lora("x", r=2, alpha=3.0)
    nn.init.normal_(m.lora_B["x"].weight)
    m.active = "x"
    x = torch.randn(4, 6)
    A, B = m.lora_A["x"].weight, m.lora_B["x"].weight
    want = F.linear(x, base.weight, base.bias) + 1.5 * x @ A.T @ B.T
    assert max_diff(m(x), want) < 1e-6
    m.add_lora("y", r=4, alpha=8.0, rslora=True)
    assert m.scaling["y"] == 4.0  # alpha/√r


# --------------------------------------------------------------------- jielong → PEFT

SAVE_CASES = {
    "llama": (dict(tie_word_embeddings=False), dict(dropout=0.1)),
    "llama-tied": (dict(tie_word_embeddings=True), dict()),
    "qwen2-all-linear": (dict(model_type="qwen2"), dict(target_modules="all-linear")),
    "qwen3-rslora": (dict(model_type="qwen3", tie_word_embeddings=False),
                     dict(target_modules=["q_proj", "v_proj", "down_proj"], rslora=True)),
    "trainable-head-and-embed": (dict(tie_word_embeddings=False),
                                 dict(target_modules=["q_proj"], trainable=["lm_head",
                                                                             "embed_tokens"])),
    "tied-trainable-head": (dict(tie_word_embeddings=True), dict(trainable=["lm_head"])),
    "tied-lora-on-head": (dict(tie_word_embeddings=True),
                          dict(target_modules=["q_proj", "lm_head"], alpha=4)),
}


@pytest.mark.parametrize("case", SAVE_CASES)
def test_saved_adapter_gives_the_same_logits_in_peft(tmp_path, case):
    model_kw, lora_kw = SAVE_CASES[case]
    model = tiny(**model_kw)
    save_model(tmp_path / "base", model)
    add_adapter(model, LoraConfig(**{"r": 4, "alpha": 8, **lora_kw}))
    randomise(model)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))

    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 4
    assert not list(tmp_path.joinpath("adapter").glob(".*"))  # no temporary files left
    keys = set(lora_state_dict(model))
    assert all(k.startswith("base_model.model.") for k in keys)
    if "q_proj" in conf["target_modules"]:
        assert "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight" in keys

    x = ids()
    ours = logits(model, x)
    theirs = hf_logits(peft_apply(tmp_path / "base", tmp_path / "adapter"), x)
    assert max_diff(ours, theirs) <= TOL, case
    assert max_diff(ours, hf_logits(hf_model(tmp_path / "base"), x)) > 1e-3  # it does something


def test_tied_trainable_modules_share_one_matrix(tmp_path):
    model = tiny(tie_word_embeddings=True)
    add_adapter(model, LoraConfig(r=2, trainable=["embed_tokens"]))
    copy_ = model.model.embed_tokens.trained["default"]
    assert model.lm_head.trained["default"] is copy_
    assert copy_ is not model.model.embed_tokens.weight
    save_adapter(model, tmp_path / "a")
    conf = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert conf["modules_to_save"] == ["embed_tokens", "lm_head"] and conf["ensure_weight_tying"]
    other = tiny(tie_word_embeddings=True)
    load_adapter(other, tmp_path / "a")
    assert other.lm_head.trained["default"] is other.model.embed_tokens.trained["default"]


# --------------------------------------------------------------------- PEFT → jielong

LOAD_CASES = {
    "q-v": (dict(tie_word_embeddings=False), dict(target_modules=["q_proj", "v_proj"])),
    # PEFT's defaults also save lm_head.base_layer.weight, the base head itself.
    "lora-on-head": (dict(tie_word_embeddings=False), dict(target_modules=["q_proj", "lm_head"])),
    "tied-lora-on-head": (dict(tie_word_embeddings=True),
                          dict(target_modules=["v_proj", "lm_head"])),
    "all-linear-patterns-rslora": (
        dict(model_type="qwen2"),
        dict(target_modules="all-linear", use_rslora=True, rank_pattern={"down_proj": 2},
             alpha_pattern={"q_proj": 3})),
    "some-layers": (dict(tie_word_embeddings=False),
                    dict(target_modules=["k_proj", "o_proj"], layers_to_transform=[1])),
    "tied-head-untied-copy": (dict(tie_word_embeddings=True),
                              dict(target_modules=["q_proj"], modules_to_save=["lm_head"])),
    "tied-embed-weight-tying": (dict(tie_word_embeddings=True),
                                dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"],
                                     ensure_weight_tying=True)),
}


@pytest.mark.parametrize("case", LOAD_CASES)
def test_adapter_written_by_peft_loads_with_peft_logits(tmp_path, case):
    peft = _peft()
    model_kw, peft_kw = LOAD_CASES[case]
    save_model(tmp_path / "base", tiny(**model_kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(hf_model(tmp_path / "base"),
                                 peft.LoraConfig(r=4, lora_alpha=8, **peft_kw)).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for n, p in pm.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    pm.save_pretrained(tmp_path / "peft")
    x = ids()
    want = hf_logits(pm, x)

    ours = load_model(tmp_path / "base").eval()
    assert load_adapter(ours, tmp_path / "peft") == "default"
    got = logits(ours, x)
    assert max_diff(got, want) <= TOL, case

    # Saved again by jielong, it still means the same to PEFT.
    save_adapter(ours, tmp_path / "again")
    assert max_diff(hf_logits(peft_apply(tmp_path / "base", tmp_path / "again"), x), want) <= TOL

    # Merged, it is the same model, and transformers agrees after a save.
    merged = merge_adapter(ours)
    assert not wrappers(merged)
    assert max_diff(logits(merged, x), want) <= TOL
    if case == "tied-head-untied-copy":
        assert merged.config.tie_word_embeddings is False
    save_model(tmp_path / "merged", merged)
    assert max_diff(hf_logits(hf_model(tmp_path / "merged"), x), want) <= TOL


def test_peft_copy_of_the_base_head_must_be_the_base_models(tmp_path):
    """PEFT saves lm_head.base_layer.weight with a LoRA on lm_head and loads it in place of
    the base's: on a base with another head that would be another model, so it is refused."""
    peft = _peft()
    save_model(tmp_path / "base", tiny(tie_word_embeddings=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(hf_model(tmp_path / "base"),
                                 peft.LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"]))
        pm.save_pretrained(tmp_path / "peft")
    file = tmp_path / "peft" / "adapter_model.safetensors"
    with safe_open(str(file), "pt") as f:
        assert "base_model.model.lm_head.base_layer.weight" in f.keys()
    for other in (tiny(seed=9, tie_word_embeddings=False), tiny(seed=9)):
        with pytest.raises(UserError) as e:
            load_adapter(other, tmp_path / "peft")
        msg = one_line(e)
        assert f"{file}: tensor 'base_model.model.lm_head.base_layer.weight'" in msg
        assert "differs from this base model's" in msg and "largest difference" in msg
        assert not adapter_names(other) and not wrappers(other)  # nothing half-loaded
    # The same head in half precision is still the same head.
    half = load_model(tmp_path / "base", dtype=torch.bfloat16)
    assert load_adapter(half, tmp_path / "peft") == "default"


def test_all_linear_means_what_peft_means(tmp_path):
    """PEFT's "all-linear": every linear layer but the output head, for tied and untied
    models alike; the adapter jielong saves from it names the same modules."""
    peft = _peft()
    for tied in (False, True):
        model = tiny(tie_word_embeddings=tied)
        save_model(tmp_path / f"base{tied}", model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = peft.get_peft_model(hf_model(tmp_path / f"base{tied}"),
                                     peft.LoraConfig(r=2, target_modules="all-linear"))
        theirs = {n.removeprefix("base_model.model.") for n, m in pm.named_modules()
                  if isinstance(m, peft.tuners.lora.LoraLayer)}
        for spelling in ("all-linear", ["all-linear"], "ALL-LINEAR"):
            m = tiny(tie_word_embeddings=tied)
            add_adapter(m, LoraConfig(r=2, target_modules=spelling))
            assert {n for n, w in m.named_modules() if isinstance(w, LoRALinear)} == theirs
        save_adapter(m, tmp_path / f"a{tied}")
        conf = json.loads((tmp_path / f"a{tied}" / "adapter_config.json").read_text())
        assert sorted(conf["target_modules"]) == sorted({n.rsplit(".", 1)[-1] for n in theirs})


# --------------------------------------------------------------------- merge

MERGE_CASES = {
    "qwen2-all-linear": (dict(model_type="qwen2", tie_word_embeddings=False),
                         dict(target_modules="all-linear")),
    "tied-trainable-head": (dict(tie_word_embeddings=True), dict(trainable=["lm_head"])),
    "tied-lora-on-head": (dict(tie_word_embeddings=True),
                          dict(target_modules=["v_proj", "lm_head"])),
}


@pytest.mark.parametrize("case", MERGE_CASES)
def test_merge_keeps_logits_and_leaves_plain_layers(tmp_path, case):
    model_kw, lora_kw = MERGE_CASES[case]
    model = tiny(**model_kw)
    keys = set(model.state_dict())
    add_adapter(model, LoraConfig(r=4, **lora_kw))
    randomise(model)
    x = ids()
    want = logits(model, x)
    merge_adapter(model)
    assert max_diff(logits(model, x), want) <= TOL
    assert not wrappers(model) and adapter_names(model) == []
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert type(getattr(model.model.layers[0].self_attn, n)) is nn.Linear
    assert type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding
    assert all(p.requires_grad for p in model.parameters())  # as before the adapter
    tied = case != "tied-lora-on-head"  # a LoRA on a tied lm_head unties it
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (
        tied and model_kw.get("tie_word_embeddings", True))
    assert set(model.state_dict()) == keys | {"lm_head.weight"}
    save_model(tmp_path / "merged", model)
    assert max_diff(hf_logits(hf_model(tmp_path / "merged"), x), want) <= TOL
    assert max_diff(logits(load_model(tmp_path / "merged"), x), want) <= TOL


# --------------------------------------------------------------------- several adapters

def test_two_adapters_on_one_base_switch_per_call(tmp_path):
    model = tiny(tie_word_embeddings=True)
    pristine = copy.deepcopy(model)
    base = logits(model)
    add_adapter(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), name="a")
    randomise(model, "a", seed=1)
    add_adapter(model, LoraConfig(r=4, target_modules="all-linear", trainable=["embed_tokens"]),
                name="b")
    randomise(model, "b", seed=2)
    assert adapter_names(model) == ["a", "b"]

    expected = {}
    for name in ("a", "b"):
        save_adapter(model, tmp_path / name, name=name)
        alone = copy.deepcopy(pristine)
        load_adapter(alone, tmp_path / name)
        expected[name] = logits(alone)
    assert max_diff(expected["a"], expected["b"]) > 1e-3

    for name in ("b", "a", "b"):
        set_adapter(model, name)
        assert max_diff(logits(model), expected[name]) <= TOL
    set_adapter(model, None)
    assert torch.equal(logits(model), base)
    with using_adapter(model, "a"):
        assert max_diff(logits(model), expected["a"]) <= TOL
    assert lora.active_adapter(model) is None

    # Loading under another name beside the first: the folder name when "default" is taken.
    assert load_adapter(model, tmp_path / "a") == "default"
    assert load_adapter(model, tmp_path / "b", name="b2") == "b2"
    assert max_diff(logits(model), expected["b"]) <= TOL

    for name in ("a", "b", "default", "b2"):
        remove_adapter(model, name)
    assert not wrappers(model) and torch.equal(logits(model), base)


# --------------------------------------------------------------------- training

@pytest.mark.parametrize("tied", [False, True])
def test_only_adapter_tensors_train_and_the_base_stays_bit_identical(tied):
    model = tiny(tie_word_embeddings=tied)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = ["embed_tokens"] if tied else ["lm_head"]
    add_adapter(model, LoraConfig(r=4, alpha=8, trainable=trainable))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n or ".trained." in n for n in names)
    assert any(".trained." in n for n in names)
    n_train, n_total = count_parameters(model)
    per_layer = sum(4 * (m.in_features + m.out_features) for m in wrappers(model)
                    if isinstance(m, LoRALinear) and "default" in m.lora_A)
    assert n_train == per_layer + VOCAB * 64  # the factors + one trained matrix (shared if tied)
    assert n_total == model.config.num_params + n_train

    # Toy task: the next token is (3·token + 1) mod vocab.
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, VOCAB, (16, 1), generator=g)
    seq = [start]
    for _ in range(15):
        seq.append((seq[-1] * 3 + 1) % VOCAB)
    x = torch.cat(seq, dim=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(12):
        out = model(x[:, :-1])
        loss = F.cross_entropy(out.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    for k, v in base_state_dict(model).items():
        assert torch.equal(v, base[k]), k


# --------------------------------------------------------------------- bad input

def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("kw, needle", [
    (dict(target_modules=["q_prj"]), "q_proj, k_proj"),
    (dict(target_modules=[]), "empty"),
    (dict(target_modules=["all-linear", "lm_head"]), "all-linear alone"),
    (dict(r=0), "r=0"),
    (dict(r=-2), "r=-2"),
    (dict(alpha=0), "alpha"),
    (dict(dropout=1.0), "dropout"),
    (dict(trainable=["norm"]), "embed_tokens, lm_head"),
    (dict(target_modules=["lm_head"], trainable=["lm_head"]), "both"),
])
def test_impossible_configs(kw, needle):
    with pytest.raises(UserError) as e:
        LoraConfig(**kw)
    assert needle in one_line(e)


def test_config_accepts_strings_and_all_linear():
    assert LoraConfig(target_modules="q_proj, v_proj").target_modules == ["q_proj", "v_proj"]
    assert LoraConfig(target_modules="all-linear").target_modules == list(lora.LINEAR)
    assert LoraConfig(r=8, alpha=16).scaling == 2.0
    assert LoraConfig(r=16, alpha=8, rslora=True).scaling == 2.0


def test_bad_names_and_tied_head_conflict():
    model = tiny()
    add_adapter(model, LoraConfig(r=2), name="x")
    with pytest.raises(UserError, match="already has"):
        add_adapter(model, LoraConfig(r=2), name="x")
    with pytest.raises(UserError, match="letters"):
        add_adapter(model, LoraConfig(r=2), name="a.b")
    with pytest.raises(UserError, match="it has: x"):
        set_adapter(model, "y")
    with pytest.raises(UserError, match="tied"):
        add_adapter(tiny(tie_word_embeddings=True),
                    LoraConfig(target_modules=["q_proj", "lm_head"], trainable=["embed_tokens"]))


@pytest.fixture
def saved(tmp_path):
    """A jielong adapter folder for a tiny untied llama, with trained embed_tokens."""
    model = tiny(tie_word_embeddings=False)
    add_adapter(model, LoraConfig(r=4, trainable=["embed_tokens"]))
    return save_adapter(model, tmp_path / "adapter")


def edit_config(d, **changes):
    path = d / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("change, needle", [
    (dict(use_dora=True), "DoRA"),
    (dict(peft_type="IA3"), "only LoRA"),
    (dict(bias="all"), "bias"),
    (dict(init_lora_weights="pissa"), "base weights"),
    (dict(trainable_token_indices=[1, 2]), "trainable tokens"),
    (dict(r=8), "rank 4"),
])
def test_unsupported_or_inconsistent_adapter_configs(saved, change, needle):
    edit_config(saved, **change)
    model = tiny(tie_word_embeddings=False)
    with pytest.raises(UserError) as e:
        load_adapter(model, saved)
    assert needle in one_line(e) and "adapter_config.json" in str(e.value)
    assert adapter_names(model) == [] and not wrappers(model)


def test_missing_and_broken_adapter_folders(tmp_path, saved):
    model = tiny(tie_word_embeddings=False)
    with pytest.raises(UserError, match="no such adapter folder"):
        load_adapter(model, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        load_adapter(model, tmp_path / "empty")
    assert "no adapter_config.json" in one_line(e)
    save_model(tmp_path / "full", tiny())
    with pytest.raises(UserError, match="full model"):
        load_adapter(model, tmp_path / "full")
    (saved / "adapter_config.json").write_text('{"peft_type": "LORA",\n "r": }')
    with pytest.raises(UserError, match=r"adapter_config.json:2: not valid JSON"):
        load_adapter(model, saved)


def test_missing_weights_file(saved):
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="no adapter_model.safetensors"):
        load_adapter(tiny(tie_word_embeddings=False), saved)


@pytest.mark.parametrize("other, needle", [
    (dict(hidden_size=128, tie_word_embeddings=False), "different base model"),
    (dict(num_hidden_layers=3, tie_word_embeddings=False), "does not have"),
    (dict(vocab_size=400, tie_word_embeddings=False), "vocabulary resized"),
])
def test_adapter_from_another_base_model_is_refused(tmp_path, other, needle):
    torch.manual_seed(0)
    donor = Transformer(preset("test", **{"vocab_size": VOCAB, **other}))
    add_adapter(donor, LoraConfig(r=4, trainable=["embed_tokens"]))
    save_adapter(donor, tmp_path / "a")
    model = tiny(tie_word_embeddings=False)
    before = logits(model)
    with pytest.raises(UserError) as e:
        load_adapter(model, tmp_path / "a")
    assert needle in one_line(e)
    assert not wrappers(model) and torch.equal(logits(model), before)  # untouched


# --------------------------------------------------------------------- the CLI command

def test_merge_command(tmp_path, capsys):
    tok = train_tokenizer(tiny_corpus(60), vocab_size=VOCAB, show_progress=False)
    model = tiny(tie_word_embeddings=True)
    save_model(tmp_path / "base", model, tok)
    add_adapter(model, LoraConfig(r=4, alpha=8, trainable=["lm_head"]))
    randomise(model)
    save_adapter(model, tmp_path / "adapter")
    want = logits(model)

    run(["merge", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged")],
        {"merge": merge_cmd})
    out = capsys.readouterr().out.strip()
    assert out.startswith("merged ") and str(tmp_path / "merged") in out and "\n" not in out
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    merged = load_model(tmp_path / "merged")
    assert merged.config.tie_word_embeddings
    assert max_diff(logits(merged), want) <= TOL

    with pytest.raises(UserError, match="own folder"):
        run(["merge", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "base")],
            {"merge": merge_cmd})


def test_merge_command_keeps_the_base_dtype(tmp_path, capsys):
    model = tiny(tie_word_embeddings=False)
    save_model(tmp_path / "base", model.to(torch.bfloat16))
    add_adapter(model.float(), LoraConfig(r=2))
    save_adapter(model, tmp_path / "adapter")
    merge_cmd(str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert "bfloat16" in capsys.readouterr().out
    conf = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert conf["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("lora_kw", [dict(trainable=["lm_head"]),
                                     dict(target_modules=["q_proj", "lm_head"])])
def test_output_weight_is_what_the_head_applies(lora_kw):
    """Fused losses multiply the final hidden states by the output matrix themselves."""

    model = tiny(tie_word_embeddings=True)
    assert lora.output_weight(model) is model.lm_head.weight
    add_adapter(model, LoraConfig(r=4, **lora_kw))
    randomise(model)
    x = ids()
    hidden = model(x, hidden_only=True)
    w = lora.output_weight(model)
    assert max_diff(hidden @ w.T, model(x)) <= 1e-5
    linear_cross_entropy(hidden, w, x).backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and
             (".trained." in n or n.startswith("lm_head.lora_"))]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
