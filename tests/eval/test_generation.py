"""Generation tasks in `jielong eval`: every task file read (Traditional, Simplified, English)
with its prompt in the data's script, answers read out of replies, refusals in three scripts,
a tiny model run through the CLI whose scores equal those recomputed from samples.jsonl, the
real DRCD and CMRC 2018 dev sets, and each bad input one line with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_adapter, tiny_corpus, write_jsonl

from jielong import cli
from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.eval import generation
from jielong.eval.answers import choice_letter, first_line, pick_label, whole_reply
from jielong.eval.generation import render, score
from jielong.eval.gentasks import GenItem, GenTask, load_generation, plain_prompt, split_tasks
from jielong.eval.metrics import corpus_bleu, corpus_chrf
from jielong.hub import open_model
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.lora import active_adapter, using_adapter
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

sacrebleu = pytest.importorskip("sacrebleu")


def squad(path, context, question, answer):
    doc = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": question, "answers": [{"text": answer, "answer_start": context.find(answer)}]},
        {"id": "q2", "question": question + "?", "answers": [{"text": answer, "answer_start": 0}]}]}]}]}
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def planted(d):
    """One small file of each kind, in Traditional and Simplified Chinese and English."""
    return {
        "hant": squad(d / "hant.json", "阿明住在龍鄉，他養了一隻貓。這裡的書店裡有很多書。", "阿明住在哪裡？", "龍鄉"),
        "hans": squad(d / "hans.json", "阿明住在龙乡，他养了一只猫。这里的书店里有很多书。", "阿明住在哪里？", "龙乡"),
        "en": squad(d / "en.json", "Mei lives in Maple town and keeps a goose.", "Where does Mei live?", "Maple town"),
        "translate": write_jsonl(d / "news.jsonl", [
            {"source": "今天天气很好。", "target": "The weather is nice today."},
            {"src": "书店里有很多书。", "ref": "There are many books in the bookstore."}]),
        "wmt": write_jsonl(d / "wmt.jsonl", [
            {"translation": {"en": "The cat sat on the mat.", "zh": "我們的貓坐在墊子上。"}},
            {"translation": {"en": "Mei keeps a goose.", "zh": "阿美說她養了一隻鵝。"}}]),
        "summarize": write_jsonl(d / "sum.jsonl", [
            {"text": "今天天气很好，我们去河边散步，看到很多人在钓鱼。", "summary": "我们去河边散步。"},
            {"document": "阿明住在龙乡，他养了一只猫，每天都陪它玩。", "summary": "阿明养猫。"}]),
        "classify": write_jsonl(d / "cls.jsonl", [
            {"text": "這部電影真好看，我還想再看一次。", "label": "正面"},
            {"text": "服務太差了，再也不來了。", "label": "負面"},
            {"text": "書店裡有很多書。", "label": "正面"}]),
        "closedbook": write_jsonl(d / "cb.jsonl", [
            {"question": "What is the capital of France?", "answers": ["Paris"]},
            {"question": "Who wrote Hamlet?", "answer": "Shakespeare"},
            {"question": "What is 2 + 2?", "answers": ["4", "four"]}]),
    }


def test_every_task_file_reads_with_a_prompt_in_its_script(tmp_path):
    f = planted(tmp_path)
    hant, hans, en = (load_generation(f"squad:{f[k]}") for k in ("hant", "hans", "en"))
    assert (hant.lang, hans.lang, en.lang) == ("zh-Hant", "zh-Hans", "en")
    assert hant.items[0].text.startswith("請根據文章回答問題") and "問題：阿明住在哪裡？" in hant.items[0].text
    assert hans.items[0].text.startswith("请根据文章回答问题") and "问题：阿明住在哪里？" in hans.items[0].text
    assert en.items[0].text.startswith("Answer the question") and en.items[0].answers == ["Maple town"]
    assert plain_prompt(hant.items[0]).endswith("\n答案：") and plain_prompt(en.items[0]).endswith("\nAnswer:")
    assert hant.name == "squad:hant" and hant.items[1].where == f"{f['hant']}#q2"

    tr = load_generation(f"translate:{f['translate']}")
    assert tr.lang == "en" and [it.answers for it in tr.items] == [["The weather is nice today."],
                                                                  ["There are many books in the bookstore."]]
    assert tr.items[0].text.startswith("Translate the following Simplified Chinese text into English")
    assert tr.items[1].where == f"{f['translate']}:2" and tr.direction.endswith("(zh-Hans→en)")
    back = load_generation(f"translate:en-zh:{f['wmt']}")  # Hugging Face's WMT rows, en into zh
    assert back.name == "translate:wmt" and back.lang == "zh-Hant"
    assert back.items[0].text.startswith("將下面的英文翻譯成繁體中文") and back.items[0].answers == ["我們的貓坐在墊子上。"]
    assert load_generation(f"translate:zh-en:{f['wmt']}").items[1].answers == ["Mei keeps a goose."]

    sm = load_generation(f"summarize:{f['summarize']}")
    assert sm.lang == "zh-Hans" and sm.items[0].text.startswith("请用一两句话概括") and sm.items[1].answers == ["阿明养猫。"]
    cl = load_generation(f"classify:{f['classify']}")
    assert cl.labels == ["正面", "負面"] and "類別：正面、負面。" in cl.items[0].text
    cb = load_generation(f"closedbook:{f['closedbook']}")
    assert cb.lang == "en" and [it.answers for it in cb.items] == [["Paris"], ["Shakespeare"], ["4", "four"]]
    assert "I don't know" in cb.items[0].text

    mc, gen = split_tasks(f"cmmlu, closedbook:{f['closedbook']},drcd-like,summarize:{f['summarize']}",
                          tmp_path, limit=2)
    assert mc == "cmmlu,drcd-like" and [t.name for t in gen] == ["closedbook:cb", "summarize:sum"]
    assert [len(t.items) for t in gen] == [2, 2]


@pytest.mark.parametrize("reply, letter", [
    ("答案：B", "B"), ("答案是 C。因为……", "C"), ("正確答案為（D）", "D"), ("Ｂ", "B"),
    ("B. 因为它最大", "B"), ("(C) is right", "C"), ("The answer is A.", "A"), ("Answer: d", None),
    ("I think the correct answer is (D), because…", "D"), ("我选 B", "B"), ("\\boxed{C}", "C"),
    ("<think>A 還是 B？</think>答案：C", "C"), ("Apple and Banana", None), ("E", None), ("我不知道", None),
    ("这道题选A", "A"),
])
def test_choice_letter(reply, letter):
    assert choice_letter(reply) == letter


def test_choice_letter_knows_how_many_choices():
    assert choice_letter("E", 5) == "E" and choice_letter("答案：E", 4) is None


def test_labels_and_lines_read_from_replies():
    assert pick_label("我覺得是負面的評論", ["正面", "負面"]) == "負面"
    assert pick_label("不是正面，是負面", ["正面", "負面"]) == "正面"  # the first it names
    assert pick_label("非常正面", ["正面", "非常正面"]) == "非常正面"  # the longest at one place
    assert pick_label("Positive.", ["negative", "positive"]) == "positive"
    assert pick_label("正向", ["正面", "负面"]) == "正面"  # closest
    assert pick_label("xyz", ["正面", "负面"]) is None
    assert first_line("答案：\n龍鄉") == "龍鄉"
    assert first_line("\n 答案：龍鄉\n因為……") == "龍鄉" and first_line("Answer: Maple town") == "Maple town"
    assert first_line("<think>想一想\n再想</think>\n龙乡") == "龙乡" and first_line("<think>沒想完") == ""
    assert whole_reply("譯文：貓坐在\n墊子上。") == "貓坐在 墊子上。"


def test_refusals_and_hallucinations_in_three_scripts():
    items = [GenItem(str(i), "q", "", a) for i, a in enumerate(
        [["巴黎"], ["東京"], ["北京"], ["Paris"], ["Canberra"], ["堪培拉"]])]
    task = GenTask("cb", "closedbook", None, "en", items)
    preds = ["法國的首都是巴黎。", "我不確定。", "我不确定，可能是上海", "I don't know.", "It is Sydney.", "是悉尼"]
    rows = [{} for _ in preds]
    got = score(task, preds, rows)
    assert [r["verdict"] for r in rows] == ["correct", "refused", "refused", "refused", "wrong", "wrong"]
    assert (got["accuracy"], got["refusal_rate"], got["hallucination_rate"]) == (1 / 6, 3 / 6, 2 / 6)


def test_classification_scores_count_no_answer_as_wrong():
    task = GenTask("c", "classify", None, "zh-Hant", [GenItem(str(i), "t", "", [y]) for i, y in
                                                       enumerate(["正面", "負面", "正面", "負面"])],
                   labels=["正面", "負面"])
    rows = [{} for _ in range(4)]
    got = score(task, ["正面", "正面", None, "負面"], rows)
    assert got["accuracy"] == 0.5 and got["no_answer"] == 1 and [r["correct"] for r in rows] == [1, 0, 0, 1]
    # by hand: 正面 P 1/2 R 1/2, 負面 P 1 R 1/2 → F1 1/2 and 2/3; macro over the file's two labels
    assert got["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)


# ----------------------------------------------------------------------------- a tiny model

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = train_tokenizer(tiny_corpus(60), vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=tok.vocab_size)).eval()
    return save_model(tmp_path_factory.mktemp("m") / "model", model, tok), model, tok


def mc_folder(d):
    """A TMMLU+-style folder: one subject, two dev questions, three scored."""
    d.mkdir()
    head = "question,A,B,C,D,answer\n"
    (d / "agronomy_dev.csv").write_text(head + "1+1=?,1,2,3,4,B\n2+2=?,4,5,6,7,A\n", encoding="utf-8")
    (d / "agronomy_test.csv").write_text(head + "3+3=?,5,6,7,8,B\n龍鄉在哪裡？,北,南,東,西,C\n"
                                         "Cats or dogs?,cat,dog,eel,ant,D\n", encoding="utf-8")
    return d


def recomputed(kind: str, rows: list[dict]) -> dict:
    """Each task's scores from its samples.jsonl rows alone."""
    n = len(rows)
    if kind == "choice":
        return {"acc": sum(r["acc"] for r in rows) / n,
                "no_answer": sum(r["pred"] is None for r in rows)}
    if kind == "squad":
        return {"em": 100 * sum(r["em"] for r in rows) / n, "f1": 100 * sum(r["f1"] for r in rows) / n}
    if kind == "translate":
        hyps, refs = [r["pred"] for r in rows], [r["reference"] for r in rows]
        return {"bleu": corpus_bleu(hyps, refs), "chrf": corpus_chrf(hyps, refs)}
    if kind == "summarize":
        return {"rouge_l": 100 * sum(r["rouge_l"] for r in rows) / n}
    if kind == "classify":
        return {"accuracy": sum(r["correct"] for r in rows) / n,
                "no_answer": sum(r["pred"] is None for r in rows)}
    return {"accuracy": sum(r["verdict"] == "correct" for r in rows) / n,
            "refusal_rate": sum(r["verdict"] == "refused" for r in rows) / n,
            "hallucination_rate": sum(r["verdict"] == "wrong" for r in rows) / n}


def test_every_kind_through_the_cli(tiny, tmp_path, capsys):
    model_dir, model, tok = tiny
    f = planted(tmp_path)
    mine = mc_folder(tmp_path / "mine")
    specs = [f"squad:{f['hant']}", f"translate:{f['translate']}", f"summarize:{f['summarize']}",
             f"classify:{f['classify']}", f"closedbook:{f['closedbook']}", str(mine)]
    out = tmp_path / "out"
    cli.main(["eval", str(model_dir), "--tasks", ",".join(specs), "--mode", "generate", "--shots", "1",
              "--max_new_tokens", "6", "--out", str(out), "--device", "cpu", "--slots", "4"])
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    gen = results["generate"]
    assert results["tasks"] == {} and list(gen) == ["mine", "squad:hant", "translate:news", "summarize:sum",
                                                    "classify:cls", "closedbook:cb"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    for name, t in gen.items():
        mine_rows = [r for r in rows if r["task"] == name]
        assert t["n"] == len(mine_rows) > 0 and t["prompt"] == "chat" and t["max_new_tokens"] == 6
        assert all({"where", "reply", "pred"} <= set(r) for r in mine_rows)
        for key, value in recomputed(t["kind"], mine_rows).items():
            assert t[key] == pytest.approx(value), (name, key)
    assert set(gen["mine"]["subjects"]) == {"agronomy"} and gen["mine"]["example_prompt"].startswith("<|im_start|>user\n以下為")
    assert "<|im_start|>assistant\nB<|im_end|>" in gen["mine"]["example_prompt"]  # the shot, as a turn
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Generation tasks" in report and "| closedbook:cb | closedbook | chat | 3 |" in report
    assert "(scores.png)" in report and (out / "scores.png").stat().st_size > 0  # drawn for these too
    assert "translate:news: BLEU" in capsys.readouterr().out

    # the engine's batched greedy reply is the one the model writes for that prompt alone
    squad_task = load_generation(f"squad:{f['hant']}")
    ids = render(tok, squad_task.items[1], chat=True)
    alone = generate_ids(model, [ids], SamplingParams(max_tokens=6, temperature=0.0), tok.end_ids)[0]
    first = next(r for r in rows if r["where"] == squad_task.items[1].where)
    assert first["reply"] == tok.decode(alone, skip_special_tokens=True)

    # plain prompts: lm-eval's context for the letters, a line break stops the reply
    cli.main(["eval", str(model_dir), "--tasks", f"{mine},closedbook:{f['closedbook']}", "--mode",
              "generate", "--chat", "off", "--shots", "0", "--limit", "2", "--max_new_tokens", "4",
              "--out", str(out), "--device", "cpu"])
    gen = json.loads((out / "results.json").read_text(encoding="utf-8"))["generate"]
    assert gen["mine"]["prompt"] == "plain" and gen["mine"]["n"] == 2 and gen["closedbook:cb"]["n"] == 2
    assert gen["mine"]["example_prompt"].endswith("A. 5\nB. 6\nC. 7\nD. 8\nAnswer:")
    assert all("\n" not in json.loads(x)["reply"] for x in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines())


def test_scripted_replies_score_as_by_hand(tiny, tmp_path, monkeypatch):
    """The tiny model writes noise (all scores 0): here the replies are given, and every score
    through the CLI is the hand-computed one."""
    f = planted(tmp_path)
    mine = mc_folder(tmp_path / "mine")
    scripted = {"mine": ["答案：B", "我不知道", "(A)"],  # right, no answer, wrong
                "squad:hant": ["龍鄉", "答案：住在龍鄉"],  # EM 1, 0; F1 1 and 2·(2/4)·1/(2/4 + 1)
                "translate:news": ["The weather is nice today.", "Many books."],
                "summarize:sum": ["我们去河边散步。", "阿明"],  # ROUGE-L 1 and 2·1·(2/4)/(1 + 2/4)
                "classify:cls": ["正面", "我覺得是正面", "負面"],
                "closedbook:cb": ["Paris", "I don't know", "5"]}

    def replies(net, tok, prompts, max_new, stop_ids, stop, slots, desc):
        assert len(prompts) == len(scripted[desc])
        return scripted[desc], {"truncated": 0, "hit_max_new_tokens": 0}

    monkeypatch.setattr(generation, "generate_replies", replies)
    specs = [str(mine), f"squad:{f['hant']}", f"translate:{f['translate']}", f"summarize:{f['summarize']}",
             f"classify:{f['classify']}", f"closedbook:{f['closedbook']}"]
    out = tmp_path / "out"
    cli.main(["eval", str(tiny[0]), "--tasks", ",".join(specs), "--mode", "generate", "--out", str(out),
              "--device", "cpu"])
    gen = json.loads((out / "results.json").read_text(encoding="utf-8"))["generate"]
    assert (gen["mine"]["acc"], gen["mine"]["no_answer"]) == (pytest.approx(1 / 3), 1)
    assert gen["squad:hant"]["em"] == 50.0 and gen["squad:hant"]["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    hyps, refs = scripted["translate:news"], ["The weather is nice today.", "There are many books in the bookstore."]
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert bleu > 0 and gen["translate:news"]["bleu"] == pytest.approx(bleu)
    assert gen["translate:news"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert gen["translate:news"]["bleu_tokenize"] == "13a"
    assert gen["summarize:sum"]["rouge_l"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert gen["summarize:sum"]["rouge_over"] == "characters"
    assert gen["classify:cls"]["accuracy"] == pytest.approx(1 / 3)  # 正面 正面 負面 for 正面 負面 正面
    assert gen["classify:cls"]["macro_f1"] == pytest.approx((1 / 2 + 0) / 2)  # 正面: P 1/2 R 1/2
    cb = gen["closedbook:cb"]
    assert (cb["accuracy"], cb["refusal_rate"], cb["hallucination_rate"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    for name, t in gen.items():
        for key, value in recomputed(t["kind"], [r for r in rows if r["task"] == name]).items():
            assert t[key] == pytest.approx(value), (name, key)


def test_replies_come_from_the_loaded_adapter(tiny, tmp_path):
    model_dir, _, tok = tiny
    adapter = make_adapter(model_dir, tmp_path / "adapter", seed=3)
    net, tok, _ = open_model(model_dir, adapters=[f"a={adapter}"])
    ids = [tok.encode("阿明住在"), tok.encode("The cat sat")]
    got, _ = generation.generate_replies(net, tok, ids, 6, tok.end_ids, [], 4, "t")
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    assert active_adapter(net) == "a"
    assert got == [tok.decode(x, skip_special_tokens=True) for x in generate_ids(net, ids, greedy, tok.end_ids)]
    with using_adapter(net, None):
        base = [tok.decode(x, skip_special_tokens=True) for x in generate_ids(net, ids, greedy, tok.end_ids)]
    assert base != got


def test_real_drcd_and_cmrc(tiny, shared_data, tmp_path):
    if not (shared_data / "drcd-dev.json").is_file() or not (shared_data / "cmrc2018-dev.json").is_file():
        pytest.skip("drcd-dev.json / cmrc2018-dev.json are not in ../shared/data")
    out = tmp_path / "out"
    cli.main(["eval", str(tiny[0]), "--tasks", "drcd,cmrc2018", "--data", str(shared_data), "--limit", "2",
              "--max_new_tokens", "2", "--out", str(out), "--device", "cpu"])
    gen = json.loads((out / "results.json").read_text(encoding="utf-8"))["generate"]
    assert (gen["drcd"]["lang"], gen["cmrc2018"]["lang"]) == ("zh-Hant", "zh-Hans")
    assert gen["drcd"]["n"] == gen["cmrc2018"]["n"] == 2
    assert "請根據文章回答問題" in gen["drcd"]["example_prompt"] or gen["drcd"]["truncated"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    for name in ("drcd", "cmrc2018"):
        mine = [r for r in rows if r["task"] == name]
        assert mine[0]["where"].endswith("-dev.json#" + mine[0]["where"].split("#")[1]) and mine[0]["answers"]
        assert gen[name]["em"] == pytest.approx(recomputed("squad", mine)["em"])
        assert gen[name]["f1"] == pytest.approx(recomputed("squad", mine)["f1"])


# ----------------------------------------------------------------------------- bad input

def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_inputs_each_say_one_line(tiny, tmp_path, capsys):
    run = ["eval", str(tiny[0]), "--out", str(tmp_path / "o"), "--data", str(tmp_path), "--tasks"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "summary": "b"}, {"text": "c"}])
    err = one_line_error(run + [f"summarize:{bad}"], capsys)
    assert f"{bad}:2: no 'summary' field" in err and "'text'" in err
    cb = write_jsonl(tmp_path / "cb.jsonl", [{"question": "q", "answers": []}])
    assert f"{cb}:1: 'answers' must be a non-empty list" in one_line_error(run + [f"closedbook:{cb}"], capsys)
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    assert "at least two labels" in one_line_error(run + [f"classify:{one}"], capsys)
    tr = write_jsonl(tmp_path / "tr.jsonl", [{"source": "a", "target": "b"}])
    assert f"{tr}:1: no 'zh' field" in one_line_error(run + [f"translate:zh-en:{tr}"], capsys)
    err = one_line_error(run + ["nosuch"], capsys)
    assert "unknown task 'nosuch'" in err and "cmmlu, ceval, mmlu, tmmluplus, drcd, cmrc2018" in err
    assert "closedbook:FILE" in err
    err = one_line_error(run + [f"qa:{bad}"], capsys)
    assert "unknown kind 'qa'" in err and "squad:FILE" in err
    assert "drcd-dev.json: no such file" in one_line_error(run + ["drcd"], capsys)
    assert "no such file" in one_line_error(run + ["summarize:nothere.jsonl"], capsys)
    (tmp_path / "broken.json").write_text('{"data": [{"paragraphs": [{"qas": []}]}]}', encoding="utf-8")
    assert "data[0].paragraphs[0]: no 'context' field" in one_line_error(run + [f"squad:{tmp_path / 'broken.json'}"],
                                                                         capsys)
