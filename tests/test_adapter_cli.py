"""`generate --adapter` and `chat --adapter` / `/adapter NAME`: several LoRA adapters on one
base model, switched per call, with the chat's KV cache read again after a switch."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_adapter, run_cli, tiny_corpus

from jielong.adapter_files import load_adapter
from jielong.checkpoint import load_model, save_model
from jielong.cli import main
from jielong.config import preset
from jielong.hub import open_model, stop_ids
from jielong.infer.chat import Session
from jielong.infer.generate import generate_text
from jielong.infer.sampling import SamplingParams
from jielong.lora import (
    active_adapter,
    set_adapter,
    using_adapter,
)
from jielong.model import Transformer
from jielong.tokenizer import Tokenizer, train_tokenizer

PROMPT = "The cat sat on"
GREEDY = SamplingParams(12, temperature=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    tok = train_tokenizer(tiny_corpus(50), vocab_size=300)
    torch.manual_seed(0)
    save_model(root / "model", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    make_adapter(root / "model", root / "a", seed=1)
    make_adapter(root / "model", root / "poem" / "adapter", seed=2)  # named "poem"
    make_adapter(root / "model", root / "wide", seed=3, vocab_size=tok.vocab_size, hidden_size=128)
    return root


def texts(model, tok, prompt: str = PROMPT) -> str:
    return generate_text(model, tok, [prompt], GREEDY)[0]


def with_adapter(base, adapter_dir=None):
    """The model loaded plainly, with one adapter loaded the plain Python way."""
    model, tok = load_model(base / "model").eval(), Tokenizer.from_dir(base / "model")
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    return model, tok


def test_generate_with_adapters_equals_loading_them_in_python(base, capsys):
    plain = texts(*with_adapter(base))
    alone = {name: texts(*with_adapter(base, d))
             for name, d in (("a", base / "a"), ("poem", base / "poem" / "adapter"))}
    assert len({plain, alone["a"], alone["poem"]}) == 3  # the adapters change the output

    def cli(*extra: str) -> str:
        main(["generate", PROMPT, "--model", str(base / "model"), "--temperature", "0",
              "--max_tokens", "12", *extra])
        return capsys.readouterr().out.splitlines()[0]

    assert cli("--adapter", str(base / "a")) == PROMPT + alone["a"]
    both = ["--adapter", str(base / "a"), str(base / "poem" / "adapter")]
    assert cli(*both) == PROMPT + alone["a"]  # the first one is active
    assert cli(*both, "--adapter_name", "poem") == PROMPT + alone["poem"]
    assert cli(*both, "--adapter_name", "off") == PROMPT + plain
    assert cli("--adapter", f"mine={base / 'poem' / 'adapter'}", "--adapter_name", "mine") \
        == PROMPT + alone["poem"]


def test_two_adapters_on_one_base_switch_per_call(base):
    model, tok, _ = open_model(base / "model", adapters=[f"a={base / 'a'}",
                                                         str(base / "poem" / "adapter")])
    assert active_adapter(model) == "a"
    expected = {"a": texts(*with_adapter(base, base / "a")),
                "poem": texts(*with_adapter(base, base / "poem" / "adapter")),
                None: texts(*with_adapter(base))}
    for name in ("a", "poem", "a", None, "poem"):
        with using_adapter(model, name):
            assert texts(model, tok) == expected[name], name
    assert active_adapter(model) == "a"  # using_adapter put it back


def conversation(base, adapters: list[str | None], lines: list[str]) -> list[str]:
    """The replies `chat` should give: each with a fresh session under its adapter."""
    model, tok, gen = open_model(base / "model", adapters=[str(base / "a"),
                                                           f"poem={base / 'poem' / 'adapter'}"])
    stops, s = stop_ids(tok, gen, model.config.eos_token_id), SamplingParams(8, temperature=0)
    messages, replies = [], []
    for name, line in zip(adapters, lines, strict=True):
        set_adapter(model, name)
        messages.append({"role": "user", "content": line})
        prompt, _ = tok.encode_chat(messages, add_generation_prompt=True)
        reply = tok.decode(list(Session(model, 256).reply(prompt, s, stops)),
                           skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies


def test_session_reads_everything_again_after_a_switch(base):
    model, tok, gen = open_model(base / "model", adapters=[str(base / "a"),
                                                           f"poem={base / 'poem' / 'adapter'}"])
    prompt, _ = tok.encode_chat([{"role": "user", "content": "Hello!"}],
                                add_generation_prompt=True)
    session = Session(model, 256)
    first = list(session.reply(prompt, GREEDY, set()))
    assert list(session.reply(prompt, GREEDY, set())) == first and session.reused > 0
    set_adapter(model, "poem")
    fresh = list(Session(model, 256).reply(prompt, GREEDY, set()))
    assert fresh != first
    assert list(session.reply(prompt, GREEDY, set())) == fresh and session.reused == 0


def test_chat_switches_adapters_mid_conversation(base):
    lines = ["Hello!", "今天天氣很好", "再見"]
    script = [lines[0], "/adapter poem", lines[1], "/adapter", "/adapter nope", "/adapter off",
              lines[2], "/quit"]
    r = run_cli("chat", "--model", str(base / "model"), "--adapter", str(base / "a"),
                f"poem={base / 'poem' / 'adapter'}", "--temperature", "0", "--max_tokens", "8",
                input="\n".join(script) + "\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"chatting with {base / 'model'} + adapter a ")
    replies = conversation(base, ["a", "poem", None], lines)
    assert replies[1] != conversation(base, ["a", "a", None], lines)[1]  # the switch matters
    where = [out.index(f"\n{replies[0]}\n"), out.index("(adapter poem; loaded: a, poem)"),
             out.index(f"\n{replies[1]}\n"), out.index("no adapter named 'nope'; loaded: a, poem"),
             out.index("(base model alone; loaded: a, poem)"),
             out.index(f"\n{replies[2]}\n")]
    assert where == sorted(where), out


@pytest.mark.parametrize("args, needle", [
    (["--adapter", "{root}/nowhere"], "{root}/nowhere: no such adapter folder"),
    (["--adapter", "{root}"], "{root}: no adapter_config.json"),
    (["--adapter", "{root}/model"], "holds a full model"),
    (["--adapter", "{root}/wide"], "{root}/wide/adapter_model.safetensors: "),
    (["--adapter", "{root}/a", "a={root}/poem/adapter"], "a second adapter named 'a'"),
    (["--adapter", "off={root}/a"], "give it a name"),
    (["--adapter", "{root}/a", "--adapter_name", "b"], "no adapter named 'b'; loaded: a"),
    (["--adapter_name", "b"], "no adapter named 'b'; loaded: none"),
])
def test_adapter_mistakes_are_one_line_errors(base, capsys, args, needle):
    args = [a.format(root=base) for a in args]
    with pytest.raises(SystemExit) as e:
        main(["generate", PROMPT, "--model", str(base / "model"), "--max_tokens", "2", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle.format(root=base) in err


def test_chat_with_an_adapter_for_another_base_exits_with_one_line(base):
    r = run_cli("chat", "--model", str(base / "model"), "--adapter", str(base / "wide"),
                input="hi\n")
    assert r.returncode == 2 and "trained on a different base model" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_an_adapter_naming_another_base_loads_with_a_note(base, capsys):
    config_file = base / "a" / "adapter_config.json"
    saved = config_file.read_text()
    config = json.loads(saved)
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    try:
        main(["generate", PROMPT, "--model", str(base / "model"), "--temperature", "0",
              "--max_tokens", "12", "--adapter", str(base / "a")])
    finally:
        config_file.write_text(saved)
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == PROMPT + texts(*with_adapter(base, base / "a"))
    assert err == f"note: adapter {base / 'a'} was trained on Qwen/Qwen2.5-0.5B; using it on " \
                  f"{base / 'model'}\n"
