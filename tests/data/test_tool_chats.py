"""Tool use in SFT data: the default chat template's Hermes-style tools (equal to
transformers' rendering, and byte for byte the old ChatML without tools), the loss mask
(the calls and answers learned, the tool list and results not) in 繁/简/English, and the
OpenAI-format checks with file:line errors."""

import json

import pytest
from conftest import tiny_corpus, write_jsonl

from jielong.data.chat import IGNORE, encode
from jielong.data.formats import read_chats, read_conversations, to_messages, tools_of
from jielong.errors import UserError
from jielong.tokenizer import Tokenizer, train_tokenizer
from jielong.train.sft import load_examples

# The template before tools, as main had it: every conversation without tools must render
# exactly as it did.
OLD_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CALC = {"type": "function", "function": {
    "name": "calculator", "description": "加減乘 whole numbers",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {"name": "天氣", "parameters": {"type": "object", "properties": {}}}}


def call(name, args, i=0):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}


def sum_chat(question, expression, result, reply, system=None):
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": None, "tool_calls": [call("calculator", json.dumps({"expression": expression}))]},
        {"role": "tool", "tool_call_id": "call_0", "content": result},
        {"role": "assistant", "content": reply}]


CHATS = {  # 繁, 简, English
    "zh-Hant": sum_chat("7 加 5 是多少？", "7 + 5", "12", "7 + 5 = 12。", system="你是龍鄉的小助手。"),
    "zh-Hans": sum_chat("请算一下 9 - 4。", "9 - 4", "5", "9 - 4 = 5。"),
    "en": sum_chat("What is 3 plus 8?", "3 + 8", "11", "11"),  # the reply repeats the result
}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(tiny_corpus(200), vocab_size=400)


@pytest.fixture(scope="module")
def hf(tok, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tok")
    tok.save(d)
    return transformers.AutoTokenizer.from_pretrained(str(d))


def test_without_tools_the_template_renders_and_masks_as_before(tok):
    old = Tokenizer(tok.backend, {**tok.config, "chat_template": OLD_TEMPLATE})
    chats = [[{"role": "user", "content": "你好"}],
             [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "阿明的宠物是什么？"},
              {"role": "assistant", "content": "阿明的宠物是猫。"}, {"role": "user", "content": "And Mei?"},
              {"role": "assistant", "content": "Mei keeps a goose.\n"}],
             [{"role": "user", "content": "1 + 1 = ?"}, {"role": "assistant", "content": ""}]]
    for chat in chats:
        for gen in (False, True):
            assert tok.apply_chat_template(chat, add_generation_prompt=gen) == \
                old.apply_chat_template(chat, add_generation_prompt=gen)
            assert tok.encode_chat(chat, add_generation_prompt=gen) == old.encode_chat(chat, add_generation_prompt=gen)
    assert tok.apply_chat_template(chats[0], tools=[]) == old.apply_chat_template(chats[0])


def test_tools_render_in_the_hermes_style_as_transformers_does(tok, hf):
    chat = [{"role": "user", "content": "台北天氣？再算 2 * 3"},
            {"role": "assistant", "content": "我查一下。", "tool_calls": [
                call("天氣", "{\"城市\": \"台北\"}", 0), call("calculator", {"expression": "2 * 3"}, 1)]},
            {"role": "tool", "tool_call_id": "call_0", "content": "晴，25°C"},
            {"role": "tool", "tool_call_id": "call_1", "content": "6"},
            {"role": "assistant", "content": "台北晴，2 * 3 = 6。"}]
    text = tok.apply_chat_template(chat, tools=[WEATHER, CALC])
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call these functions:\n<tools>\n"
                           + json.dumps(WEATHER, ensure_ascii=False) + "\n" + json.dumps(CALC, ensure_ascii=False)
                           + "\n</tools>\n")
    assert ("<|im_start|>assistant\n我查一下。\n<tool_call>\n{\"name\": \"天氣\", \"arguments\": {\"城市\": \"台北\"}}\n"
            "</tool_call>\n<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2 * 3\"}}\n"
            "</tool_call><|im_end|>\n<|im_start|>tool\n<tool_response>\n晴，25°C\n</tool_response><|im_end|>\n"
            "<|im_start|>tool\n<tool_response>\n6\n</tool_response><|im_end|>\n") in text
    for c in [chat, CHATS["zh-Hant"], CHATS["en"]]:
        for gen in (False, True):
            ours = tok.apply_chat_template(c, add_generation_prompt=gen, tools=[WEATHER, CALC])
            assert hf.apply_chat_template(c, tools=[WEATHER, CALC], add_generation_prompt=gen, tokenize=False) == ours
    # the system message goes before the tool list, in the one system turn
    assert tok.apply_chat_template(CHATS["zh-Hant"], tools=[CALC]).startswith(
        "<|im_start|>system\n你是龍鄉的小助手。\n\n# Tools\n")


@pytest.mark.parametrize("lang", list(CHATS))
def test_mask_learns_the_calls_and_answers_not_the_tools_or_results(tok, lang):
    chat = to_messages({"messages": CHATS[lang], "tools": [CALC]}, "x.jsonl:1")
    ids, labels = encode(tok, chat, tools=[CALC])
    text = tok.apply_chat_template(chat, tools=[CALC])
    assert tok.decode(ids) == text
    learned = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    expression, result, reply = json.loads(chat[-3]["tool_calls"][0]["function"]["arguments"])["expression"], \
        chat[-2]["content"], chat[-1]["content"]
    expected = (f"<tool_call>\n{{\"name\": \"calculator\", \"arguments\": {{\"expression\": \"{expression}\"}}}}\n"
                f"</tool_call><|im_end|>{reply}<|im_end|>")
    assert tok.decode(learned) == expected
    # nothing of the system turn (tool list) nor of the tool's turn is learned
    tool_turn = f"<|im_start|>tool\n<tool_response>\n{result}\n</tool_response><|im_end|>"
    start = text.index(tool_turn)
    enc = tok.backend.encode(text, add_special_tokens=False)
    for k, (a, b) in enumerate(enc.offsets):
        if a < text.index("<|im_start|>user") or start <= a < start + len(tool_turn):
            assert labels[k] == IGNORE, (lang, text[a:b])


def test_a_record_may_end_on_its_calls(tok):
    chat = to_messages({"messages": CHATS["en"][:2]}, "x.jsonl:1")
    ids, labels = encode(tok, chat)
    assert tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE]).startswith("<tool_call>\n{")


def test_records_with_tools_read_and_canonical(tmp_path, tok):
    raw = {"messages": CHATS["zh-Hans"], "tools": json.dumps([CALC])}  # tools as JSON text, as some sets store it
    raw["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"expression":"9 - 4"}'
    path = write_jsonl(tmp_path / "t.jsonl", [raw, {"messages": CHATS["en"][:1] + [{"role": "assistant", "content": "Hi"}]}])
    rows = list(read_chats(path))
    assert [r[2] for r in rows] == [[CALC], None]
    assert rows[0][1][1]["tool_calls"][0]["function"]["arguments"] == '{"expression": "9 - 4"}'
    assert rows[0][1][1]["content"] == "" and rows[0][1][2]["tool_call_id"] == "call_0"
    with pytest.raises(UserError, match=r"t\.jsonl:1: this command does not read a record's \"tools\""):
        list(read_conversations(path))
    examples = load_examples([str(path)], tok, None, False)  # `jielong train sft` renders the tools
    assert tok.decode(examples[0][0]).startswith("<|im_start|>system\n# Tools\n")


def bad(messages=None, **extra):
    return {"messages": messages if messages is not None else CHATS["en"], **extra}


BAD = [
    (bad([CHATS["en"][0], {"role": "assistant", "tool_calls": [call("calculator", "{oops")]}]),
     r"messages\[2\] tool_calls\[1\] arguments are not valid JSON"),
    (bad([CHATS["en"][0], {"role": "assistant", "tool_calls": [call("calculator", "[1, 2]")]}]),
     r"arguments must be a JSON object"),
    (bad([CHATS["en"][0], {"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]}]),
     r'tool_calls\[1\] needs "function"'),
    (bad([CHATS["en"][0], {"role": "assistant", "tool_calls": "calculator"}]), r"tool_calls must be a list"),
    (bad([CHATS["en"][0], {"role": "user", "content": "x", "tool_calls": [call("c", "{}")]}]),
     r"has tool_calls but role 'user'"),
    (bad([CHATS["en"][0], {"role": "tool", "content": "11"}, CHATS["en"][3]]),
     r"message 2 is a tool result without an assistant message with tool_calls"),
    (bad(CHATS["en"][:2] + CHATS["en"][3:]), r"makes 1 tool call\(s\) but 0 tool message\(s\) follow"),
    (bad(CHATS["en"][:2] + [{**CHATS["en"][2], "tool_call_id": "call_9"}] + CHATS["en"][3:]),
     r"answers tool_call_id 'call_9', which message 2 does not make"),
    (bad(CHATS["en"][:3] + [{"role": "user", "content": "?"}, CHATS["en"][3]]),
     r"message 4 follows tool results but is not the assistant's"),
    (bad(CHATS["en"][:3]), r"must end with an assistant reply"),
    (bad([CHATS["en"][0], {**CHATS["en"][2], "content": 11}, CHATS["en"][3]]), r"messages\[2\] \(tool\) content must be a string"),
    (bad(tools=[WEATHER]), r"message 2 calls 'calculator', which is not in the record's tools \(天氣\)"),
    (bad(tools="[{"), r'"tools" is text but not valid JSON'),
    (bad(tools=[{"type": "function"}]), r'tools\[1\] needs "function"'),
    (bad(tools=[{"function": {"name": "x", "parameters": "none"}}]), r"tools\[1\] \(x\) parameters must be"),
]


@pytest.mark.parametrize("record, message", BAD)
def test_malformed_tool_records_name_file_and_line(record, message):
    with pytest.raises(UserError, match=f"^data.jsonl:7: .*{message}"):
        to_messages(record, "data.jsonl:7")
        tools_of(record, "data.jsonl:7")


def test_a_template_that_drops_tool_calls_is_refused(tok):
    old = Tokenizer(tok.backend, {**tok.config, "chat_template": OLD_TEMPLATE.replace(
        "message['content']", "(message['content'] or '')")})
    with pytest.raises(UserError, match="does not write its tool call 'calculator'"):
        encode(old, to_messages({"messages": CHATS["en"]}, "x"))
