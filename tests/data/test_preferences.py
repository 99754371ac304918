"""Preference data: every row format, ratings for KTO, response-only encoding at the token
level, and one-line errors that name file:line."""


import pytest
from conftest import bot, tiny_corpus, user, write_jsonl

from jielong.data.chat import IGNORE
from jielong.data.preferences import PrefPair, Rating, encode_response, read_pairs, read_ratings
from jielong.errors import UserError
from jielong.tokenizer import train_tokenizer


def system(text):
    return {"role": "system", "content": text}


GOOD = {"prompt": "今天天氣如何？", "chosen": "今天晴天，很暖和。", "rejected": "不知道。"}


def test_pairs_in_every_format(tmp_path):
    rows = [
        GOOD,  # strings, Traditional Chinese
        {"prompt": [system("You are kind."), user("Hi!"), bot("Hello."), user("Say it politely.")],
         "chosen": [bot("Please, have a seat.")], "rejected": [bot("Sit.")]},
        {"chosen": [user("请把门关上"), bot("好的，我来关门。")],  # implicit prompt, Simplified
         "rejected": [user("请把门关上"), bot("自己关。")]},
        {"prompt": [{"role": "human", "content": "阿明的寵物是什麼？"}],  # ShareGPT role names
         "responses": ["阿明的寵物是貓。", "阿明的宠物是猫。", [bot("狗。")]]},
    ]
    pairs = read_pairs([str(write_jsonl(tmp_path / "prefs.jsonl", rows))])
    f = tmp_path / "prefs.jsonl"
    assert pairs[0] == PrefPair([user("今天天氣如何？")], [bot("今天晴天，很暖和。")], [bot("不知道。")], f"{f}:1")
    assert pairs[1].prompt == rows[1]["prompt"] and pairs[1].chosen == [bot("Please, have a seat.")]
    assert pairs[2] == PrefPair([user("请把门关上")], [bot("好的，我来关门。")], [bot("自己关。")], f"{f}:3")
    ranking = pairs[3:]
    assert [(p.chosen[0]["content"], p.rejected[0]["content"]) for p in ranking] == [
        ("阿明的寵物是貓。", "阿明的宠物是猫。"), ("阿明的寵物是貓。", "狗。"), ("阿明的宠物是猫。", "狗。")]
    assert all(p.prompt == [user("阿明的寵物是什麼？")] and p.where == f"{f}:4" for p in ranking)
    # A system prompt goes first where a prompt has none, and nowhere else.
    with_system = read_pairs(str(f), system="你是助手。")
    assert with_system[0].prompt == [system("你是助手。"), user("今天天氣如何？")]
    assert with_system[1].prompt[0] == system("You are kind.")
    assert with_system[2].prompt == [system("你是助手。"), user("请把门关上")]


def test_implicit_prompt_splits_a_multi_turn_conversation(tmp_path):
    shared = [system("Be brief."), user("2+2?"), bot("4"), user("And 3+3?")]
    row = {"chosen": shared + [bot("6")], "rejected": shared + [bot("Seven, I think.")]}
    (p,) = read_pairs([str(write_jsonl(tmp_path / "p.jsonl", [row]))])
    assert p.prompt == shared and p.chosen == [bot("6")] and p.rejected == [bot("Seven, I think.")]


def test_ratings_and_pairs_as_ratings(tmp_path):
    rows = [{"prompt": "Q", "completion": "A", "label": label}
            for label in (True, False, 1, 0, "👍", "👎", "up", "DOWN", "good", "bad")]
    rows += [GOOD, {"prompt": "問題", "responses": ["最好", "中間", "最差"]}]
    f = write_jsonl(tmp_path / "kto.jsonl", rows)
    ratings = read_ratings([str(f)])
    assert [r.label for r in ratings[:10]] == [True, False] * 5
    assert ratings[0] == Rating([user("Q")], [bot("A")], True, f"{f}:1")
    assert ratings[10:12] == [Rating([user("今天天氣如何？")], [bot("今天晴天，很暖和。")], True, f"{f}:11"),
                              Rating([user("今天天氣如何？")], [bot("不知道。")], False, f"{f}:11")]
    # Of a ranking, the best is liked and the worst disliked.
    assert [(r.completion[0]["content"], r.label) for r in ratings[12:]] == [("最好", True), ("最差", False)]
    with pytest.raises(UserError, match=r"kto\.jsonl:1: a rating .* unpaired data, for `jielong train kto`"):
        read_pairs([str(f)])


def test_synthetic_script_rankings_read_as_pairs(tmp_path):
    from jielong.demo.tasks import script_preferences, world_for

    rows, _ = script_preferences(world_for(0), n_train=6, n_test=2)
    pairs = read_pairs([str(write_jsonl(tmp_path / "script.jsonl", rows))])
    assert len(pairs) == 6 * 3
    assert pairs[0].chosen == [bot(rows[0]["responses"][0])]
    assert pairs[0].rejected == [bot(rows[0]["responses"][1])]


def test_encode_response_learns_only_the_reply_and_its_end_of_turn():
    tok = train_tokenizer(tiny_corpus(200), vocab_size=400)
    prompt = [system("你是助手。"), user("阿明的寵物是什麼？"), bot("阿明的寵物是貓。"), user("And Mei?")]
    reply = [bot("Mei keeps a goose. 她养了一只鹅。")]
    ids, labels = encode_response(tok, prompt, reply)
    # ChatML piece by piece: every prompt token (the earlier reply too) is context.
    context = []
    for m in prompt:
        context += tok.encode(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    head = tok.encode("<|im_start|>assistant\n")
    body = tok.encode(reply[0]["content"] + "<|im_end|>")
    tail = tok.encode("\n")
    assert ids == context + head + body + tail
    assert labels == [IGNORE] * (len(context) + len(head)) + body + [IGNORE] * len(tail)
    assert labels[len(context) + len(head) + len(body) - 1] == tok.im_end_id
    assert tok.decode([t for t in labels if t != IGNORE]) == reply[0]["content"] + "<|im_end|>"


BAD_ROWS = [
    ({"prompt": "q", "chosen": "a"}, r"a pair needs both \"chosen\" and \"rejected\"; \"rejected\" is missing"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, r"chosen must be a string or a list of messages, got int"),
    ({"prompt": "你好", "chosen": "一樣", "rejected": "一樣"}, r"chosen and rejected are the same reply"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, r"chosen is an empty reply"),
    ({"prompt": "q", "chosen": [bot("a"), user("b")], "rejected": "c"},
     r"chosen must end with an assistant message \(the reply\), not user"),
    ({"prompt": [user("q"), bot("a")], "chosen": "b", "rejected": "c"},
     r"prompt must end with a user message"),
    ({"prompt": "", "chosen": "b", "rejected": "c"}, r"prompt is empty"),
    ({"prompt": [user("q"), user("r")], "chosen": "b", "rejected": "c"}, r"prompt has two user messages in a row"),
    ({"prompt": [{"role": "robot", "content": "q"}], "chosen": "b", "rejected": "c"}, r"prompt\[0\] has role 'robot'"),
    ({"prompt": [{"role": "user"}], "chosen": "b", "rejected": "c"}, r"prompt\[0\] must be a message like"),
    ({"prompt": "q", "chosen": [bot("a"), system("s"), bot("b")], "rejected": "c"}, r"chosen holds a system message"),
    ({"chosen": "a", "rejected": "b"}, r"no \"prompt\"; add one, or give chosen and rejected as whole conversations"),
    ({"chosen": [user("q"), bot("a"), user("x"), bot("b")], "rejected": [user("q"), bot("a"), user("y"), bot("c")]},
     r"no \"prompt\", and chosen and rejected do not share the conversation up to a user message"),
    ({"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("a"), user("r"), bot("b")]},
     r"no \"prompt\", and chosen and rejected do not share"),
    ({"chosen": [user("q")], "rejected": [user("q"), bot("a")]},
     r"chosen has no reply after the prompt it shares"),
    ({"prompt": "q", "responses": ["only one"]}, r"\"responses\" must be a list of at least two replies.*got 1"),
    ({"prompt": "q", "responses": "ab"}, r"\"responses\" must be a list of at least two replies.*got str"),
    ({"prompt": "q", "responses": ["a", "b", "a"]}, r"responses\[0\] and responses\[2\] are the same reply"),
    ({"responses": ["a", "b"]}, r"a ranking needs a \"prompt\""),
    ([1, 2], r"expected a JSON object like .*got list"),
    ({"text": "hello"}, r"not a preference row \(keys: 'text'\)"),
    ("{not json", r"not valid JSON"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS, ids=[str(i) for i in range(len(BAD_ROWS))])
def test_malformed_rows_are_one_line_errors_with_file_and_line(tmp_path, row, message):
    f = write_jsonl(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: " + message) as e:
        read_pairs([str(f)])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "q", "completion": "a", "label": "maybe"}, r"label \"maybe\" is not a rating; use true/false"),
    ({"prompt": "q", "completion": "a", "label": 2}, r"label 2 is not a rating"),
    ({"prompt": "q", "completion": "a"}, r"a rating needs .*\"label\" is missing"),
    ({"prompt": "q", "completion": [user("a")], "label": True}, r"completion must end with an assistant message"),
])
def test_malformed_ratings(tmp_path, row, message):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a", "label": True}, row])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: " + message):
        read_ratings([str(f)])


def test_file_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty\.jsonl: no rows"):
        read_pairs([str(empty)])
    with pytest.raises(UserError, match=r"empty\.jsonl: no rows"):
        read_ratings([str(empty)])
    with pytest.raises(UserError, match=r"missing\.jsonl: no such file"):
        read_pairs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(UserError, match=r"prefs\.csv: preference data must be a \.jsonl file"):
        read_pairs([str(tmp_path / "prefs.csv")])
