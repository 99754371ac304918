"""The agent loop with a scripted model, tools from functions, the Hermes rendering."""

import json

import pytest

from jielong.agent.loop import hermes_messages, local_chat, render_with_tools, run_agent
from jielong.agent.toolbox import builtin_tools, tool_from_function, user_tool
from jielong.errors import UserError
from jielong.tokenizer import train_tokenizer


def call(name, **arguments):
    return {"id": f"call_{name}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def scripted(*turns):
    """A chat function that plays `turns` in order (each (content, calls)) and records what
    it was shown."""
    seen = []

    def chat(messages, specs):
        seen.append((json.loads(json.dumps(messages)), specs))
        return turns[len(seen) - 1]

    chat.seen = seen
    return chat


def test_calls_run_and_their_results_reach_the_model():
    chat = scripted(("", [call("calculator", expression="1234 * 5678")]),
                    ("", [call("calculator", expression="7006652 + 99")]),
                    ("答案是 7006751。", []))
    steps = []
    trace = run_agent(chat, "1234 乘 5678 再加 99？", builtin_tools(["calculator", "date"]),
                      on_step=steps.append)
    assert trace.answer == "答案是 7006751。" and trace.stopped is None
    assert [(s.kind, s.name, s.result) for s in trace.steps] == [
        ("call", "calculator", "7006652"), ("call", "calculator", "7006751"),
        ("answer", "", "")]
    assert steps == trace.steps  # each step shown as it happened
    second_turn, specs = chat.seen[1]
    assert [t["function"]["name"] for t in specs] == ["calculator", "date"]
    assert second_turn[-2]["tool_calls"][0]["id"] == "call_calculator"
    assert second_turn[-1] == {"role": "tool", "tool_call_id": "call_calculator",
                               "name": "calculator", "content": "7006652"}


def test_a_tools_error_goes_back_to_the_model_and_the_loop_goes_on():
    chat = scripted(("", [call("calculator", expression="__import__('os')"), call("nope"),
                          {"id": "c3", "type": "function",
                           "function": {"name": "calculator", "arguments": "{not json"}},
                          call("calculator", expr="1")]),
                    ("I could not compute it.", []))
    trace = run_agent(chat, "?", builtin_tools(["calculator"]))
    errors = [s for s in trace.steps if s.kind == "call"]
    assert all(s.error for s in errors) and len(errors) == 4
    assert "not a calculator function" in errors[0].result
    assert "no tool 'nope'" in errors[1].result and "calculator" in errors[1].result
    assert "not JSON" in errors[2].result
    assert "unknown argument expr" in errors[3].result and "missing argument expression" in errors[3].result
    tool_messages = [m for m in chat.seen[1][0] if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == [s.result for s in errors]
    assert trace.answer == "I could not compute it."


def test_an_exception_inside_a_tool_is_its_result():
    def boom(city: str) -> str:
        """Weather.

        Args:
            city: where
        """
        raise RuntimeError("the weather service is down")

    trace = run_agent(scripted(("", [call("boom", city="台北")]), ("sorry", [])), "?",
                      [tool_from_function(boom)])
    assert trace.steps[0].error and trace.steps[0].result == \
        "error: RuntimeError: the weather service is down"


def test_the_step_limit_ends_a_model_that_keeps_calling():
    chat = scripted(*[("", [call("date")])] * 5)
    trace = run_agent(chat, "what day?", builtin_tools(["date"]), max_steps=3)
    assert trace.answer is None and len(chat.seen) == 3
    assert "stopped after 3 steps" in trace.stopped and "--max_steps" in trace.stopped
    assert [s.step for s in trace.steps] == [1, 2, 3]


def test_a_user_tool_schema_comes_from_its_signature_and_docstring(tmp_path):
    f = tmp_path / "my_tools.py"
    f.write_text('''
from typing import Literal

def weather(city: str, days: int = 1, unit: Literal["C", "F"] = "C",
            hourly: bool = False, stations: list[str] | None = None) -> dict:
    """Forecast for a city.

    Longer notes the model does not need.

    Args:
        city: The city, e.g. 台北 or Tainan.
        days: How many days ahead,
            from 1 to 7.
        unit: Celsius or Fahrenheit.
        hourly: Hour by hour.
        stations: Weather stations to ask.
    """
    return {"city": city, "days": days, "unit": unit}
''', encoding="utf-8")
    tool = user_tool(f"{f}:weather")
    assert tool.spec() == {"type": "function", "function": {
        "name": "weather", "description": "Forecast for a city.",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "description": "The city, e.g. 台北 or Tainan."},
            "days": {"type": "integer", "description": "How many days ahead, from 1 to 7."},
            "unit": {"type": "string", "enum": ["C", "F"], "description": "Celsius or Fahrenheit."},
            "hourly": {"type": "boolean", "description": "Hour by hour."},
            "stations": {"type": "array", "items": {"type": "string"},
                         "description": "Weather stations to ask."}}}}}
    assert tool.call('{"city": "台北", "days": 2}') == \
        ('{"city": "台北", "days": 2, "unit": "C"}', False)


@pytest.mark.parametrize("source, spec, says", [
    ("def f(x):\n    '''Doc.'''\n", "f", "no type hint"),
    ("def f(x: int):\n    pass\n", "f", "no docstring"),
    ("def f(x: set):\n    '''Doc.'''\n", "f", "no JSON schema"),
    ("def f(x: int):\n    '''Doc.'''\n", "g", "no function 'g'; it has f"),
    ("raise ValueError('bad')\n", "f", "importing .* failed: ValueError: bad"),
])
def test_a_user_tool_that_cannot_be_described_is_a_clear_error(tmp_path, source, spec, says):
    f = tmp_path / "t.py"
    f.write_text(source)
    with pytest.raises(UserError, match=says):
        user_tool(f"{f}:{spec}")


def test_a_local_models_calls_are_parsed_out_of_its_text():
    tok = train_tokenizer(["hello world 你好"] * 20, vocab_size=300)  # jielong's ChatML template
    text = ('Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": '
            '"2+3"}}\n</tool_call>\n<tool_call>{"name": "search", "arguments": {"query": '
            '"退貨"}}</tool_call><tool_call>{broken}</tool_call>')
    chat = local_chat(tok, lambda ids: text)
    content, calls = chat([{"role": "user", "content": "2+3?"}], [t.spec() for t in builtin_tools(["calculator"])])
    assert content.startswith("Let me compute.") and "{broken}" in content  # kept as text
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("calculator", {"expression": "2+3"}), ("search", {"query": "退貨"})]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    assert chat([{"role": "user", "content": "hi"}], []) == (text.strip(), [])


def test_a_template_that_ignores_tools_gets_them_in_the_hermes_way():
    tok = train_tokenizer(["hello world 你好"] * 20, vocab_size=300)
    tok.config["chat_template"] = (  # plain ChatML, which ignores tools (jielong's now takes them)
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "(message['content'] or '') + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    specs = [t.spec() for t in builtin_tools(["calculator"])]
    messages = [{"role": "user", "content": "2+3?"},
                {"role": "assistant", "content": None, "tool_calls": [call("calculator", expression="2+3")]},
                {"role": "tool", "tool_call_id": "call_calculator", "name": "calculator", "content": "5"}]
    text = render_with_tools(tok, messages, specs)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert '"name": "calculator"' in text and "<tools>" in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": '
            '{"expression": "2+3"}}\n</tool_call><|im_end|>') in text
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert hermes_messages([{"role": "system", "content": "Be brief."}], specs)[0][
        "content"].startswith("Be brief.\n\n# Tools")


def test_search_gives_numbered_passages_from_the_index(tmp_path):
    from jielong.rag.index import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hant.txt").write_text("退貨政策：收到商品七天內可以退貨。", encoding="utf-8")
    (docs / "hans.txt").write_text("长城很长，有两万多公里。", encoding="utf-8")
    (docs / "en.txt").write_text("The Eiffel Tower stands in Paris.", encoding="utf-8")
    build_index([docs], tmp_path / "index")
    search = builtin_tools(["search"], index=str(tmp_path / "index"))[0]
    for query, source in [("退貨要幾天", "hant.txt"), ("长城多长", "hans.txt"), ("Eiffel Tower", "en.txt")]:
        result, error = search.call({"query": query})
        assert not error and result.startswith("[1] (") and source in result.splitlines()[0]
    with pytest.raises(UserError, match="needs --index"):
        builtin_tools(["search"])


def test_a_template_that_takes_tools_renders_them_itself():
    tok = train_tokenizer(["hello world"] * 20, vocab_size=300)
    tok.config["chat_template"] = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %}CALL {{ c.function.arguments | tojson }}{% endfor %}\n"
        "{% endfor %}assistant:")
    tok._template = None
    messages = [{"role": "user", "content": "2+3?"},
                {"role": "assistant", "content": None, "tool_calls": [call("calculator", expression="2+3")]}]
    text = render_with_tools(tok, messages, [t.spec() for t in builtin_tools(["calculator", "date"])])
    # the template's own layout; arguments handed over as an object, as templates expect
    # (trim_blocks, as transformers renders, eats the newline after each block tag)
    assert text == 'TOOLS:calculator;date;user: 2+3?assistant: CALL {"expression": "2+3"}assistant:'
