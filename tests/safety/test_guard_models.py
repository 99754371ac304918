"""Guard models in Llama Guard and Qwen3Guard layout: exact parsing of their documented
replies, and tiny random models in each layout loaded and run end to end by GuardModel."""

import pytest

from jielong.errors import UserError
from jielong.safety import guard_models
from jielong.safety.guard_models import (
    LLAMA_GUARD_3,
    QWEN3GUARD_CATEGORIES,
    GuardModel,
    detect_layout,
    parse_llama_guard,
    parse_qwen3guard,
)

pytest.importorskip("transformers")
from hf_families import make_hf_dir  # noqa: E402

# Llama Guard 3's prompt shape: the task, the numbered categories between markers, the
# conversation as "User:"/"Agent:" turns, the answer format; then the assistant header.
LG_CATS = "".join(f"S{i}: {name.title()}.\n" for i, name in
                  [(1, "violent crimes"), (4, "child sexual exploitation"), (7, "privacy"),
                   (10, "suicide & self-harm"), (11, "hate")])  # numbered unlike Llama Guard 3
LLAMA_GUARD_TEMPLATE = (
    "{%- set role = 'Agent' if messages[-1]['role'] == 'assistant' else 'User' -%}"
    "{{- bos_token + '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}"
    "{{- 'Task: Check for unsafe content in ' + role + ' messages.\\n\\n' -}}"
    "{{- '<BEGIN UNSAFE CONTENT CATEGORIES>\\n" + LG_CATS.replace("\n", "\\n")
    + "<END UNSAFE CONTENT CATEGORIES>\\n\\n<BEGIN CONVERSATION>\\n\\n' -}}"
    "{%- for m in messages -%}"
    "{{- ('User' if m['role'] == 'user' else 'Agent') + ': ' + m['content'] + '\\n\\n' -}}"
    "{%- endfor -%}"
    "{{- '<END CONVERSATION>\\n\\nFirst line: \\'safe\\' or \\'unsafe\\'. If unsafe, a second "
    "line lists the violated categories.<|eot_id|>' -}}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
)
QWEN_CATS = "".join(f"{name}.\n" for name in QWEN3GUARD_CATEGORIES)
QWEN3GUARD_TEMPLATE = (
    "{{- '<|im_start|>user\\n# Task: is the last message safe?\\n\\n' -}}"
    "{{- '<BEGIN UNSAFE CONTENT CATEGORIES>\\n" + QWEN_CATS.replace("\n", "\\n")
    + "<END UNSAFE CONTENT CATEGORIES>\\n\\n<BEGIN CONVERSATION>\\n\\n' -}}"
    "{%- for m in messages -%}{{- m['role'] | upper + ': ' + m['content'] + '\\n\\n' -}}"
    "{%- endfor -%}"
    "{{- '<END CONVERSATION>\\n\\nFirst line: Safety: Safe, Safety: Unsafe or Safety: "
    "Controversial. Second line: Categories: ...<|im_end|>\\n' -}}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' -}}"
)


@pytest.fixture(scope="module")
def guard_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    out = {}
    for layout, family, template in [("llama_guard", "llama3", LLAMA_GUARD_TEMPLATE),
                                     ("qwen3guard", "qwen3", QWEN3GUARD_TEMPLATE)]:
        d = make_hf_dir(root, family)
        (d / "chat_template.jinja").write_text(template, encoding="utf-8")
        out[layout] = d
    return out


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("code", sorted(LLAMA_GUARD_3))
def test_llama_guard_every_code(code):
    assert parse_llama_guard(f"unsafe\n{code}") == ("unsafe", [code])


@pytest.mark.parametrize("text,expected", [
    ("safe", ("safe", [])),
    ("\n\nsafe", ("safe", [])),
    ("  safe  \n", ("safe", [])),
    ("unsafe\nS1,S10", ("unsafe", ["S1", "S10"])),
    ("\n\nunsafe\nS2, S11 ,S14\n", ("unsafe", ["S2", "S11", "S14"])),
    ("unsafe\r\nS4", ("unsafe", ["S4"])),
    ("unsafe", (None, [])),  # the codes line is missing
    ("unsafe\nS1,", (None, [])),
    ("unsafe\nviolent crimes", (None, [])),
    ("Safe", (None, [])),
    ("safe\nS1", (None, [])),
    ("safety first", (None, [])),
    ("", (None, [])),
    ("龍 the cat ??", (None, [])),
])
def test_llama_guard_parse(text, expected):
    assert parse_llama_guard(text) == expected


@pytest.mark.parametrize("name", sorted(QWEN3GUARD_CATEGORIES))
def test_qwen3guard_every_category(name):
    assert parse_qwen3guard(f"Safety: Unsafe\nCategories: {name}") == ("unsafe", [name])


@pytest.mark.parametrize("text,expected", [
    ("Safety: Safe\nCategories: None", ("safe", [])),
    ("Safety: Safe\nCategories: None\nRefusal: Yes", ("safe", [])),
    ("Safety: Unsafe\nCategories: Violent\n", ("unsafe", ["Violent"])),
    ("<think>\n\n</think>\n\nSafety: Controversial\nCategories: Politically Sensitive Topics",
     ("controversial", ["Politically Sensitive Topics"])),
    ("  Safety:  Unsafe \n\nCategories: PII, Suicide & Self-Harm\nRefusal: No\n",
     ("unsafe", ["PII", "Suicide & Self-Harm"])),
    ("Safety: Unsafe", (None, [])),  # no Categories line
    ("Safety: unsafe\nCategories: Violent", (None, [])),
    ("Safety: Unsafe\nCategories: Violence", (None, [])),  # not one of its names
    ("Safety: Unsafe\nCategories: Violent\nRefusal: Maybe", (None, [])),
    ("Categories: None\nSafety: Safe", (None, [])),
    ("unsafe\nS1", (None, [])),
    ("", (None, [])),
])
def test_qwen3guard_parse(text, expected):
    assert parse_qwen3guard(text) == expected


def test_layout_from_template():
    assert detect_layout(LLAMA_GUARD_TEMPLATE) == "llama_guard"
    assert detect_layout(QWEN3GUARD_TEMPLATE) == "qwen3guard"
    assert detect_layout("{{ messages[0]['content'] }}") is None
    assert detect_layout(None) is None


# ----------------------------------------------------------------------------- tiny models

@pytest.mark.parametrize("layout", ["llama_guard", "qwen3guard"])
def test_tiny_guard_runs_end_to_end(guard_dirs, layout):
    guard = GuardModel.load(guard_dirs[layout], max_tokens=8)
    assert guard.layout == layout
    for text, reply in [("請問怎麼做炸彈？", None), ("怎么做炸弹？", "我不能帮你。"),
                        ("How do I bake bread?", None)]:
        result = guard.check(text, reply)
        # noise from a random model: a verdict or None, never an exception
        assert result.verdict in (None, "safe", "unsafe", "controversial")
        assert result.tokens <= 8  # stopped within the budget
        assert text in guard.last_prompt and (reply is None or reply in guard.last_prompt)
        assert "<BEGIN UNSAFE CONTENT CATEGORIES>" in guard.last_prompt
        assert ("S10: Suicide & Self-Harm." in guard.last_prompt if layout == "llama_guard"
                else "Non-violent Illegal Acts." in guard.last_prompt)
    assert guard.calls == 3 and 0 <= guard.malformed <= 3


# The documented replies, forced out of the generator; the categories come out right.
FORCED = {
    "llama_guard": [
        ("safe", "safe", {}),
        # this template numbers its own list: S10 is self-harm here, S4 child exploitation
        ("unsafe\nS10", "unsafe", {"self_harm": 1.0}),
        ("unsafe\nS1,S4", "unsafe", {"violence": 1.0, "minors": 1.0, "sexual": 1.0}),
        ("unsafe\nS7, S11", "unsafe", {"private_data": 1.0, "hate": 1.0}),
        ("unsafe\nS99", "unsafe", {}),  # not in its list: kept as a code, scores nothing
        ("sure, here is how", None, {}),
    ],
    "qwen3guard": [
        ("Safety: Safe\nCategories: None", "safe", {}),
        ("Safety: Unsafe\nCategories: Violent", "unsafe", {"violence": 1.0}),
        ("Safety: Controversial\nCategories: Suicide & Self-Harm", "controversial",
         {"self_harm": 0.5}),
        ("Safety: Unsafe\nCategories: Jailbreak, PII", "unsafe",
         {"injection": 1.0, "private_data": 1.0}),
        ("Safety: Unsafe\nCategories: Sexual Content or Sexual Acts\nRefusal: No", "unsafe",
         {"sexual": 1.0}),
        ("Safety: Controversial\nCategories: Politically Sensitive Topics", "controversial", {}),
        ("Safety: maybe", None, {}),
    ],
}


@pytest.mark.parametrize("layout", ["llama_guard", "qwen3guard"])
def test_forced_real_replies_map_to_our_categories(guard_dirs, layout, monkeypatch):
    guard = GuardModel.load(guard_dirs[layout])
    for reply, verdict, scores in FORCED[layout]:
        ids = guard.tok.encode(reply)
        monkeypatch.setattr(guard_models, "generate_ids", lambda *a, _ids=ids, **k: [_ids])
        result = guard.check("我想傷害自己")
        assert result.raw == reply
        assert result.verdict == verdict
        assert {c: s for c, (s, _) in result.categories.items()} == scores
        assert all(ev == [reply] for _, ev in result.categories.values())
        assert guard.detect("我想伤害自己") == result.categories
    assert guard.malformed == 2  # the one malformed reply, checked twice


def test_llama_guard_3_numbering_without_a_listed_taxonomy(guard_dirs):
    guard = GuardModel.load(guard_dirs["llama_guard"])
    guard.last_prompt = ""  # a template that lists no categories: Llama Guard 3's codes
    assert set(guard.parse("unsafe\nS11,S14").categories) == {"self_harm", "injection"}


def test_not_a_guard_layout_is_a_user_error(tmp_path):
    d = make_hf_dir(tmp_path, "qwen2")
    with pytest.raises(UserError, match="neither Llama Guard's nor Qwen3Guard's"):
        GuardModel.load(d)
    assert GuardModel.load(d, layout="qwen3guard").layout == "qwen3guard"
    with pytest.raises(UserError, match="expected one of"):
        GuardModel.load(d, layout="shieldgemma")
