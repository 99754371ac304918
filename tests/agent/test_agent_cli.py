"""`jielong agent` end to end, in this process: a tiny local model (plumbing: it will not call
tools well), and a stub OpenAI-compatible server whose planted tool calls the CLI runs."""

import json

import pytest
import torch
from conftest import serving, tiny_corpus

from jielong.checkpoint import save_model
from jielong.cli import main
from jielong.config import preset
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

pytest.importorskip("openai")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """jielong's test-preset model with its ChatML template (which ignores `tools`: they go
    in the Hermes way), its context long enough for the tools' descriptions."""
    tok = train_tokenizer(tiny_corpus(60), vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=tok.vocab_size, max_position_embeddings=2048))
    return save_model(tmp_path_factory.mktemp("agent") / "tiny", model, tok)


def test_a_tiny_local_model_answers_through_the_loop(tiny, tmp_path, capsys):
    tools = tmp_path / "my_tools.py"
    tools.write_text('def add(a: int, b: int) -> int:\n    """Add two numbers."""\n    return a + b\n')
    code, out, err = agent(capsys, "What is 2+3? 二加三是多少？", "--model", str(tiny),
                           "--max_tokens", "12", "--tools", "calculator", "--tool", f"{tools}:add",
                           "--json", "--device", "cpu")
    assert code == 0, err
    trace = json.loads(out)
    assert trace["question"] == "What is 2+3? 二加三是多少？" and trace["stopped"] is None
    assert trace["steps"][-1]["kind"] == "answer" and isinstance(trace["answer"], str)
    assert trace["messages"][-1] == {"role": "assistant", "content": trace["answer"]}
    code, out, err = agent(capsys, "你好", "--model", str(tiny), "--max_tokens", "4", "--tools",
                           "--device", "cpu")
    assert code == 0, err
    assert out.startswith(f"agent · {tiny} · tools: none\n") and "\nanswer: " in out


def agent(capsys, *args) -> tuple[int, str, str]:
    """`jielong agent ARGS` in this process (exit code, stdout, stderr)."""
    try:
        main(["agent", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def stub_server(turns, seen):
    """An OpenAI-compatible /v1 that answers each chat request with the next planted turn."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "stub", "object": "model", "created": 0,
                                            "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    def complete(body: dict):
        seen.append(body)
        content, calls = turns[min(len(seen), len(turns)) - 1]
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [{"id": f"call_{i}", "type": "function", "function": {
                "name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
                for i, (name, args) in enumerate(calls)]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if calls else "stop"}]}

    return app


def test_planted_calls_from_a_server_run_and_their_results_go_back(capsys):
    seen = []
    turns = [(None, [("calculator", {"expression": "1234 * 5678"}), ("date", {})]),
             (None, [("calculator", {"expression": "1/0"})]),
             ("1234 × 5678 = 7006652", [])]
    with serving(stub_server(turns, seen)) as url:
        code, out, err = agent(capsys, "1234 乘以 5678？", "--url", url + "/v1")
    assert code == 0, err
    assert out.startswith("agent · ") and "tools: calculator, date" in out
    assert "step 1 · calculator" in out and " → 7006652" in out
    assert "step 1 · date" in out and "step 2 · calculator" in out
    assert " → error: ValueError: division by zero" in out
    assert out.rstrip().endswith("answer: 1234 × 5678 = 7006652")
    assert [t["function"]["name"] for t in seen[0]["tools"]] == ["calculator", "date"]
    results = [m for m in seen[1]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in results][0] == ("call_0", "7006652")
    assert seen[1]["messages"][1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert len(seen) == 3


def test_the_step_limit_ends_the_run_with_a_message(capsys):
    seen = []
    with serving(stub_server([(None, [("date", {})])], seen)) as url:
        code, out, _ = agent(capsys, "what day is it?", "--url", url + "/v1", "--max_steps", "2",
                             "--json")
    assert code == 1 and len(seen) == 2
    trace = json.loads(out)
    assert trace["answer"] is None and "stopped after 2 steps" in trace["stopped"]


def test_mistakes_are_one_line_errors(capsys):
    for args, says in [(["hi"], "error: name a model"),
                       (["hi", "--url", "http://127.0.0.1:9/v1", "--tools", "search"], "needs --index"),
                       (["hi", "--url", "http://127.0.0.1:9/v1", "--tools", "shell"], "not a built-in tool"),
                       (["hi", "--url", "http://127.0.0.1:9/v1"], "could not list its models")]:
        code, _, err = agent(capsys, *args)
        assert code == 2 and err.startswith("error: ") and says in err and len(err.splitlines()) == 1
