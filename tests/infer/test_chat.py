"""`jielong chat`: streamed replies with the model's template, a cache kept across turns."""

import pytest

from jielong.checkpoint import load_model
from jielong.hub import read_generation_config, stop_ids
from jielong.infer.chat import Session, fit_chat, stream_text
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.tokenizer import Tokenizer

pytest.importorskip("transformers")
from conftest import run_cli  # noqa: E402
from hf_families import make_hf_dir  # noqa: E402


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return make_hf_dir(tmp_path_factory.mktemp("chat"), "qwen2")


def test_session_reuses_the_cache_and_matches_plain_generation(qwen):
    model, tok = load_model(qwen).eval(), Tokenizer.from_dir(qwen)
    s = SamplingParams(12, temperature=0)
    convo = [{"role": "user", "content": "Hello! How are you today?"}]
    session = Session(model, 256)
    first_prompt: list[int] = []
    for turn in range(2):
        prompt, _ = tok.encode_chat(convo, add_generation_prompt=True)
        got = list(session.reply(prompt, s, set()))
        assert got == generate_ids(model, [prompt], s)[0], turn
        if turn:
            assert session.reused >= len(first_prompt)  # the first turn was not read again
        assert session.cache.pos == len(prompt) + len(got) - 1
        first_prompt = prompt
        convo += [{"role": "assistant", "content": tok.decode(got)},
                  {"role": "user", "content": "今天天氣很好！"}]


def test_reply_stops_at_the_end_of_turn_token(qwen):
    model, tok = load_model(qwen).eval(), Tokenizer.from_dir(qwen)
    prompt, _ = tok.encode_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    free = list(Session(model, 256).reply(prompt, SamplingParams(8, temperature=0), set()))
    stops = {free[3]}
    assert list(Session(model, 256).reply(prompt, SamplingParams(8, temperature=0), stops)) == free[:3]
    assert stop_ids(tok, read_generation_config(qwen)) >= {tok.backend.token_to_id("<|im_end|>")}


def test_stream_text_writes_whole_characters_only(qwen):
    tok = Tokenizer.from_dir(qwen)
    ids = tok.encode("饕餮 🐉 dragon")
    pieces: list[str] = []
    assert stream_text(tok, iter(ids), pieces.append) == "饕餮 🐉 dragon"
    assert "".join(pieces) == "饕餮 🐉 dragon" and not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 3  # streamed, not written at the end


def test_chat_command_runs_a_conversation_with_commands(qwen):
    script = "\n".join(["Hello!", "/temperature 0", "今天天氣很好", "/system 你是一個助手。",
                        "再見", "/temperature hot", "/reset", "/help", "/quit", "never read"])
    r = run_cli("chat", "--model", str(qwen), "--max_tokens", "8", "--seed", "0",
                input=script + "\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "temperature 0.7" in out  # from generation_config.json
    assert "(temperature 0)" in out and "system prompt set" in out
    assert "needs a number" in out and "conversation cleared" in out and "/reset" in out
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith(("(", "chatting", " "))]
    assert len(lines) >= 3  # three replies were streamed


def test_chat_without_a_template_is_a_clear_error(tmp_path):
    from conftest import tiny_corpus

    from jielong.checkpoint import save_model
    from jielong.config import preset
    from jielong.model import Transformer
    from jielong.tokenizer import train_tokenizer

    tok = train_tokenizer(tiny_corpus(50), vocab_size=300)
    tok.config.pop("chat_template")
    save_model(tmp_path / "m", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    r = run_cli("chat", "--model", str(tmp_path / "m"), input="hi\n")
    assert r.returncode == 2 and "no chat template" in r.stderr and "Traceback" not in r.stderr


LONG = "Please tell me about the river and the cat that sat on the mat near it. "


def test_a_conversation_that_outgrows_the_context_keeps_answering(qwen):
    model, tok = load_model(qwen).eval(), Tokenizer.from_dir(qwen)
    context, s = 96, SamplingParams(24, temperature=0)  # 24: a quarter of the context
    session, messages, dropped_any = Session(model, context), [], 0
    for turn in range(8):
        messages.append({"role": "user", "content": f"{turn}. {LONG}"})
        messages, prompt, dropped = fit_chat(tok, "Be brief.", messages, context, 24)
        dropped_any += dropped
        assert len(prompt) + 24 <= context and messages[-1]["content"].startswith(f"{turn}.")
        assert tok.decode(prompt).count("Be brief.") == 1  # the system prompt stays
        reply = tok.decode(list(session.reply(prompt, s, set())))
        messages.append({"role": "assistant", "content": reply})
    assert dropped_any and len(messages) < 16


def test_chat_command_drops_the_oldest_turns_with_a_notice(qwen):
    script = "\n".join(f"{i}. {LONG}" for i in range(6)) + "\n"
    r = run_cli("chat", "--model", str(qwen), "--context", "96", "--seed", "0",
                "--system", "Be brief.", "--temperature", "0", input=script)
    assert r.returncode == 0, r.stderr
    assert "/reset to start over" not in r.stdout and "tokens, more than" not in r.stdout
    notices = [ln for ln in r.stdout.splitlines() if ln.startswith("(the conversation outgrew")]
    assert notices and all("96-token context" in n and "system prompt stays" in n
                           for n in notices), r.stdout
    r = run_cli("chat", "--model", str(qwen), "--context", "96", "--max_tokens", "96", input="")
    assert r.returncode == 2 and "--max_tokens 96: must be between 1 and 95" in r.stderr
