"""SFT: the three data formats, exact loss masks, packing, and training that learns."""

import json

import pytest
import torch
from conftest import run_cli, tiny_corpus

from jielong.checkpoint import load_model, save_model
from jielong.config import preset
from jielong.data.chat import IGNORE, encode
from jielong.data.formats import to_messages
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.packing import attention_mask, pack, packed_loss


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(tiny_corpus(200), vocab_size=400)


RECORDS = {
    "openai": {"messages": [{"role": "system", "content": "你是助手。"},
                            {"role": "user", "content": "阿明的寵物是什麼？"},
                            {"role": "assistant", "content": "阿明的寵物是貓。"},
                            {"role": "user", "content": "And Mei?"},
                            {"role": "assistant", "content": "Mei keeps a goose."}]},
    "sharegpt": {"system": "你是助手。",
                 "conversations": [{"from": "human", "value": "阿明的寵物是什麼？"},
                                   {"from": "gpt", "value": "阿明的寵物是貓。"},
                                   {"from": "human", "value": "And Mei?"},
                                   {"from": "gpt", "value": "Mei keeps a goose."}]},
    "alpaca": {"system": "你是助手。", "history": [["阿明的寵物是什麼？", "阿明的寵物是貓。"]],
               "instruction": "And", "input": "Mei?", "output": "Mei keeps a goose."},
}


@pytest.mark.parametrize("fmt", list(RECORDS))
def test_formats_give_the_same_conversation(fmt):
    messages = to_messages(RECORDS[fmt], "x.jsonl:1")
    expected = [m["content"] for m in RECORDS["openai"]["messages"]]
    if fmt == "alpaca":
        expected[3] = "And\n\nMei?"
    assert [m["content"] for m in messages] == expected
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("fmt", list(RECORDS))
def test_loss_mask_is_exactly_the_replies_and_their_end_of_turn(tok, fmt):
    messages = to_messages(RECORDS[fmt], "x.jsonl:1")
    ids, labels = encode(tok, messages)
    # Build the expected ids piece by piece: ChatML text around, reply + <|im_end|> learned.
    expected, learned = [], []
    for m in messages:
        head = tok.encode(f"<|im_start|>{m['role']}\n")
        if m["role"] == "assistant":
            body, tail = tok.encode(m["content"] + "<|im_end|>"), tok.encode("\n")
            expected += head + body + tail
            learned += [False] * len(head) + [True] * len(body) + [False] * len(tail)
        else:
            part = tok.encode(f"{m['content']}<|im_end|>\n")
            expected += head + part
            learned += [False] * (len(head) + len(part))
    assert ids == expected
    assert [lab != IGNORE for lab in labels] == learned
    assert all(lab == i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE)
    assert ids[max(i for i, k in enumerate(learned) if k)] == tok.im_end_id
    _, all_labels = encode(tok, messages, train_on_prompt=True)
    assert all_labels == ids


@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen3"])
def test_loss_mask_with_real_family_templates(tmp_path, family):
    pytest.importorskip("transformers")
    from hf_families import make_hf_dir

    from jielong.tokenizer import Tokenizer

    t = Tokenizer.from_dir(make_hf_dir(tmp_path, family))
    messages = to_messages(RECORDS["sharegpt"], "x.jsonl:1")
    ids, labels = encode(t, messages)
    learned = t.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    end = {"llama3": "<|eot_id|>", "mistral": "</s>", "qwen3": "<|im_end|>"}[family]
    assert learned.replace(" ", "") == f"阿明的寵物是貓。{end}Meikeepsagoose.{end}"


BAD = [
    ({"text": "hi"}, "not a conversation record"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "must end with an assistant reply"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "two user messages in a row"),
    ({"conversations": [{"from": "alien", "value": "a"}]}, "has role 'alien'"),
    ({"instruction": "a", "output": 3}, "output must be a string"),
    ({"messages": [{"role": "user"}]}, 'needs "role" and "content"'),
]


@pytest.mark.parametrize("record, message", BAD)
def test_malformed_records_name_file_and_line(record, message):
    with pytest.raises(UserError, match=f"^data.jsonl:7: .*{message}"):
        to_messages(record, "data.jsonl:7")


def test_packing_changes_no_loss(tok):
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=tok.vocab_size)).eval()
    convos = [to_messages(r, "x") for r in RECORDS.values()] + [
        [{"role": "user", "content": f"{i} + {i} = ?"}, {"role": "assistant", "content": f"{2 * i}。"}]
        for i in range(7)]
    examples = [encode(tok, c) for c in convos]
    packed = pack(examples, 160, pad_id=0)
    assert packed.n_examples == len(examples) and packed.inputs.shape[0] < len(examples)
    batch = {"input_ids": packed.inputs, "labels": packed.targets, "positions": packed.positions,
             "docs": packed.docs}
    with torch.no_grad():
        loss, _ = packed_loss(model, batch)
        total = count = 0
        for ids, labels in examples:  # one at a time, no packing, no mask
            logits = model(torch.tensor([ids[:-1]]))[0]
            target = torch.tensor(labels[1:])
            total += torch.nn.functional.cross_entropy(logits, target, reduction="sum",
                                                       ignore_index=IGNORE).item()
            count += int((target != IGNORE).sum())
    assert abs(loss.item() - total / count) < 1e-4
    m = attention_mask(packed.docs)[0, 0]
    assert not m[packed.docs[0] == 1][:, packed.docs[0] == 0].any()  # no peeking across


def test_too_long_conversations_are_skipped_and_counted(tok):
    long = [{"role": "user", "content": "長" * 300}, {"role": "assistant", "content": "好"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    packed = pack([encode(tok, long), encode(tok, short)], 64, pad_id=0)
    assert (packed.n_examples, packed.n_skipped) == (1, 1)


def write_chats(path, n=60):
    rows = []
    for i in range(n):
        a, b = i % 9, (i * 7) % 9
        rows.append({"messages": [{"role": "user", "content": f"{a} + {b} = ?"},
                                  {"role": "assistant", "content": f"{a} + {b} = {a + b}。"}]})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_sft_command_lowers_the_loss_and_writes_a_model(tmp_path, tok):
    torch.manual_seed(0)
    base = save_model(tmp_path / "base", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    data = write_chats(tmp_path / "chats.jsonl")
    r = run_cli("train", "sft", str(data), "--model", str(base), "--out", str(tmp_path / "run"),
                "--steps", "40", "--batch_size", "4", "--lr", "3e-3", "--seq_len", "128",
                "--eval_every", "20", "--val_fraction", "0.2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [x["val_loss"] for x in rows if "val_loss" in x]
    losses = [x["loss"] for x in rows if "loss" in x]
    assert losses[-1] < losses[0] * 0.6 and val[-1] < val[0]
    model = load_model(tmp_path / "run" / "model")
    assert model.config.vocab_size == tok.vocab_size
    assert "conversations in" in r.stdout and "done:" in r.stdout


def test_sft_bad_data_is_one_line(tmp_path, tok):
    base = save_model(tmp_path / "base", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", '
                    '"content": "b"}]}\n{"messages": [{"role": "user", "content": "a"}]}\n')
    r = run_cli("train", "sft", str(data), "--model", str(base), "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {data}:2: the conversation must end with an assistant "
                                "reply to learn from")


def test_sft_lora_trains_an_adapter_peft_layout(tmp_path, tok):
    torch.manual_seed(0)
    base = save_model(tmp_path / "base", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    data = write_chats(tmp_path / "chats.jsonl")
    r = run_cli("train", "sft", str(data), "--model", str(base), "--out", str(tmp_path / "run"),
                "--method", "lora", "--r", "4", "--steps", "30", "--batch_size", "4", "--lr",
                "1e-2", "--seq_len", "128", "--save_every", "15")
    assert r.returncode == 0, r.stderr
    adapter = tmp_path / "run" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in rows if "loss" in x]
    assert losses[-1] < losses[0]


def test_lora_resume_continues_the_adapter_exactly(tmp_path, tok):
    """A LoRA run cut after its step-6 checkpoint and resumed ends with the same adapter as
    an uninterrupted run (the optimizer must keep stepping the adapter it was built with)."""
    import shutil

    from safetensors.torch import load_file

    from jielong.lora import LoraConfig
    from jielong.train.loop import TrainConfig
    from jielong.train.sft import sft

    torch.manual_seed(0)
    base = save_model(tmp_path / "base", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    data = write_chats(tmp_path / "chats.jsonl")
    run = tmp_path / "run"
    cfg = TrainConfig(steps=12, batch_size=4, lr=1e-2, warmup_steps=1, save_every=6, eval_every=100,
                      device="cpu")
    args = dict(model=str(base), out=str(run), method="lora", seq_len=128, train=cfg, lora=LoraConfig(r=4))
    sft([str(data)], **args)
    whole = load_file(run / "adapter" / "adapter_model.safetensors")
    shutil.rmtree(run / "checkpoints" / "step-0000012")
    shutil.rmtree(run / "adapter")
    sft([str(data)], resume=True, **args)
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    assert set(whole) == set(resumed)
    for k in whole:
        assert torch.allclose(whole[k], resumed[k], atol=1e-6), k
