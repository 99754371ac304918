"""The demo's tools stage without a model: the calculator, the Hermes-call parser, the
training chats (no held-out sum in them, valid records, masks) and the tool loop driven by a
scripted model."""

import json

import pytest
from conftest import tiny_corpus

from jielong.data.chat import IGNORE, encode
from jielong.data.formats import to_messages
from jielong.demo import tools
from jielong.tokenizer import train_tokenizer


@pytest.mark.parametrize("expression", ["__import__('os').system('ls')", "1 / 0", "x + 1", "[1] * 9", "7 +"])
def test_the_calculators_errors_go_back_as_the_tools_result(expression):
    assert tools.run_call({"function": {"name": "calculator", "arguments": json.dumps({"expression": "7 + 5"})}}) == "12"
    assert tools.run_call({"function": {"name": "calculator",
                                        "arguments": json.dumps({"expression": expression})}}).startswith("error: ")


def test_parse_calls():
    text = ('好的。\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "7 + 5"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "calculator", "arguments": "7 + 5"}\n</tool_call>'  # arguments not an object
            '<tool_call>{"name": "天氣", "arguments": {"城市": "台北"}}</tool_call><tool_call>{oops</tool_call>')
    content, calls = tools.parse_calls(text)
    assert content == "好的。"
    assert [c["function"]["name"] for c in calls] == ["calculator", "天氣"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"城市": "台北"}
    assert calls[0]["id"] != calls[1]["id"] and calls[0]["type"] == "function"
    assert tools.run_call(calls[0]) == "12" and tools.run_call(calls[1]).startswith("error: no tool")
    assert tools.parse_calls("7 + 5 = 12.") == ("7 + 5 = 12.", [])


def test_training_chats_hold_no_held_out_sum_and_learn_calls_not_results():
    held = tools.held_out_sums()
    assert len(held) > 50 and {lang for *_, lang in held} == {"en", "zh-Hant", "zh-Hans"}
    rows = tools.tool_chats(n_sums=120, n_facts=30)
    calls = [r for r in rows if any(m.get("tool_calls") for m in r["messages"])]
    assert len(calls) == 120 and len(rows) == 150
    asked = {json.loads(m["tool_calls"][0]["function"]["arguments"])["expression"]
             for r in calls for m in r["messages"] if m.get("tool_calls")}
    assert not asked & {f"{a} {op} {b}" for a, op, b, _ in held}
    tok = train_tokenizer(tiny_corpus(100), vocab_size=300)
    for r in rows[:20]:
        messages = to_messages(r, "tools")  # a valid OpenAI record
        ids, labels = encode(tok, messages)
        learned = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])
        if len(messages) > 3 and messages[-2]["role"] == "tool":
            assert "<tool_response>" not in learned and learned.startswith("<tool_call>")
            assert learned.endswith(messages[-1]["content"] + "<|im_end|>")


def test_the_loop_feeds_the_result_back(monkeypatch):
    seen = []

    def scripted(model, tok, chats, tools_, max_new):
        seen.append(chats)
        if chats[0][-1]["role"] == "user":  # first turn: call for the sum, answer the fact directly
            return ['<tool_call>\n{"name": "calculator", "arguments": {"expression": "7 + 5"}}\n</tool_call>',
                    "阿明住在龍鄉。"]
        return [f"7 + 5 = {chats[0][-1]['content']}。"]

    monkeypatch.setattr(tools, "_generate", scripted)
    out = tools.with_tool(None, None, ["7 加 5 是多少？", "阿明住在哪裡？"])
    assert out[0]["results"] == ["12"] and out[0]["answer"] == "7 + 5 = 12。"
    assert out[1]["calls"] == [] and out[1]["answer"] == "阿明住在龍鄉。"
    second = seen[1][0]
    assert [m["role"] for m in second] == ["user", "assistant", "tool"]
    assert second[2]["tool_call_id"] == second[1]["tool_calls"][0]["id"]
    assert len(seen) == 2 and len(seen[1]) == 1  # only the call goes round again
