"""Multiple-choice benchmarks from local files: every published layout read, prompts equal to
lm-eval's strings, log-likelihoods equal to a plain forward pass, `jielong eval` end to end,
and each bad input one line with exit code 2."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, tiny_corpus

from jielong import cli
from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.eval.benchmarks import Question, Subject, context, load_task, read_csv, tasks_from
from jielong.eval.loglikelihood import choice_logprobs, encode_pair, pick
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

CMMLU_HEAD = ",Question,A,B,C,D,Answer\n"
CEVAL_HEAD = "id,question,A,B,C,D,answer,explanation\n"
TMMLU_HEAD = "question,A,B,C,D,answer,subject\n"


def planted(root, layout: str):
    """A tiny task folder in a published layout: subject `agronomy` (or `anatomy` for MMLU),
    two dev questions and three scored ones."""
    dev = [("1+1=?", "1", "2", "3", "4", "B"), ("2+2=?", "4", "5", "6", "7", "A")]
    test = [("3+3=?", "5", "6", "7", "8", "B"), ("\"Cats\", or dogs?", "cat", "dog", "eel", "ant", "D"),
            ("龍鄉在哪裡？", "北", "南", "東", "西", "C")]

    def rows(items, head, fmt):
        return head + "".join(fmt(i, r) for i, r in enumerate(items))

    def q(s):
        return '"' + s.replace('"', '""') + '"'
    if layout == "cmmlu":
        files = {"dev/agronomy.csv": rows(dev, CMMLU_HEAD, lambda i, r: f"{i},{','.join(map(q, r))}\n"),
                 "test/agronomy.csv": rows(test, CMMLU_HEAD, lambda i, r: f"{i},{','.join(map(q, r))}\n")}
    elif layout == "ceval":
        line = lambda i, r: f"{i},{','.join(map(q, r))},because\n"  # noqa: E731
        files = {"dev/agronomy_dev.csv": rows(dev, CEVAL_HEAD, line),
                 "val/agronomy_val.csv": rows(test, CEVAL_HEAD, line),
                 "test/agronomy_test.csv": CEVAL_HEAD + "0,q,a,b,c,d,,\n"}  # no answers, as published
    elif layout == "mmlu":
        line = lambda i, r: ",".join(map(q, r)) + "\n"  # noqa: E731
        files = {"dev/anatomy_dev.csv": rows(dev, "", line), "test/anatomy_test.csv": rows(test, "", line)}
    else:
        line = lambda i, r: ",".join(map(q, r)) + ",agronomy\n"  # noqa: E731
        files = {"agronomy_dev.csv": rows(dev, TMMLU_HEAD, line),
                 "agronomy_test.csv": rows(test, TMMLU_HEAD, line)}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("hf_export", [False, True])
def test_tmmluplus_as_parquet_reads_as_its_csvs(tmp_path, hf_export):
    """TMMLU+'s columns in parquet files: {subject}_{split}.parquet, or the Hugging Face
    export's {subject}/{split}/0000.parquet — the same questions as the CSVs."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    csvs = load_task(str(planted(tmp_path / "csv", "tmmluplus")))
    for split, questions in (("dev", csvs.subjects[0].shots), ("test", csvs.subjects[0].questions)):
        path = tmp_path / "pq" / ("agronomy/" + split + "/0000.parquet" if hf_export else
                                 f"agronomy_{split}.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        cols = {"question": [q.question for q in questions],
                **{k: [q.choices[i] for q in questions] for i, k in enumerate("ABCD")},
                "answer": ["ABCD"[q.answer] for q in questions], "subject": ["agronomy"] * len(questions)}
        pq.write_table(pa.table(cols), path)
    task = load_task(str(tmp_path / "pq"))
    assert task.kind == "tmmluplus" and [s.name for s in task.subjects] == ["agronomy"]
    got = task.subjects[0]
    assert [(q.question, q.choices, q.answer) for q in got.questions] == \
        [(q.question, q.choices, q.answer) for q in csvs.subjects[0].questions]
    assert [q.question for q in got.shots] == ["1+1=?", "2+2=?"]
    assert got.questions[2].where.endswith("0000.parquet: row 3" if hf_export else "agronomy_test.parquet: row 3")
    bad = tmp_path / "bad"
    bad.mkdir()
    cols["answer"][0] = "E"
    pq.write_table(pa.table(cols), bad / "agronomy_test.parquet")
    with pytest.raises(UserError, match=r"agronomy_test.parquet: row 1: answer 'E' is not one of"):
        load_task(str(bad))


@pytest.mark.parametrize("layout", ["cmmlu", "ceval", "mmlu", "tmmluplus"])
def test_every_published_layout_reads(tmp_path, layout):
    planted(tmp_path / layout, layout)
    for task in (load_task(layout, tmp_path), load_task(str(tmp_path / layout))):
        assert task.kind == layout  # a folder of one's own is known by its header
        [s] = task.subjects
        assert s.name == ("anatomy" if layout == "mmlu" else "agronomy")
        assert [q.answer for q in s.questions] == [1, 3, 2]
        assert s.questions[1].question == '"Cats", or dogs?' and s.questions[2].choices == list("北南東西")
        assert [q.question for q in s.shots] == ["1+1=?", "2+2=?"]
        assert re.fullmatch(r".*\.csv:" + ("2" if layout == "mmlu" else "3"), s.questions[1].where)
    cats = {"cmmlu": ["Other"], "ceval": ["other"], "mmlu": ["STEM"], "tmmluplus": ["other"]}
    assert load_task(layout, tmp_path).subjects[0].categories == cats[layout]  # agronomy: not C-Eval's


def test_prompts_are_lm_evals():
    dev = [Question("1+1=?", ["1", "2", "3", "4"], 1, "d:2"), Question("2+2=?", ["4", "5", "6", "7"], 0, "d:3")]
    q = Question(" 3+3=? ", ["5", "6", "7", "8"], 1, "t:2")
    cm = Subject("agronomy", [q], dev, ["Other"], "农学")
    assert context("cmmlu", cm, q, 0) == ("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
                                          "3+3=?\nA. 5\nB. 6\nC. 7\nD. 8\n答案：")
    assert context("cmmlu", cm, q, 2) == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
        "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\n答案： B\n\n"
        "2+2=?\nA. 4\nB. 5\nC. 6\nD. 7\n答案： A\n\n"
        "3+3=?\nA. 5\nB. 6\nC. 7\nD. 8\n答案：")
    mm = Subject("high_school_physics", [q], dev, ["STEM"], "high school physics")
    assert context("mmlu", mm, q, 2) == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "2+2=?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer: A\n\n"
        "3+3=?\nA. 5\nB. 6\nC. 7\nD. 8\nAnswer:")
    ce = Subject("accountant", [q], dev, ["Other"], "注册会计师")
    assert context("ceval", ce, q, 0).startswith("以下是中国关于注册会计师的单项选择题，请选出其中的正确答案。\n\n3+3=?\n")
    tm = Subject("ttqav2", [q], dev, ["social sciences"], "台灣在地用語")
    assert context("tmmluplus", tm, q, 1) == ("以下為台灣在地用語的單選題，請提供正確答案的選項。\n\n"
                                              "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
                                              "3+3=?\nA. 5\nB. 6\nC. 7\nD. 8\nAnswer:")
    same = Subject("s", dev, dev, [], "s")  # shots from the scored split leave the question out
    assert context("mmlu", same, dev[0], 1).count("2+2=?") == 1 and context("mmlu", same, dev[0], 1).count("1+1") == 1


def test_real_cmmlu_dev_reads(tmp_path):
    real = SHARED_DATA / "cmmlu-dev"
    if not real.is_dir():
        pytest.skip("../shared/data/cmmlu-dev is not present")
    (tmp_path / "cmmlu").mkdir()
    (tmp_path / "cmmlu" / "dev").symlink_to(real.resolve())
    (tmp_path / "cmmlu" / "test").symlink_to(real.resolve())
    task = load_task("cmmlu", tmp_path)
    assert len(task.subjects) == 67 and all(len(s.questions) == 5 for s in task.subjects)
    agro = next(s for s in task.subjects if s.name == "agronomy")
    assert agro.title == "农学" and agro.categories == ["Other"] and agro.questions[0].answer == 2
    assert context("cmmlu", agro, agro.questions[0], 0).startswith("以下是关于农学的单项选择题")
    flat = load_task(str(real))  # the folder as it is: one split, shots from it
    assert flat.kind == "cmmlu" and len(flat.subjects) == 67


# ----------------------------------------------------------------------------- scoring

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = tiny_corpus(60) + ["答案： A\n\n答案： B\nAnswer: C\nAnswer: D 以下是关于农学的单项选择题"] * 5
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=tok.vocab_size)).eval()
    return save_model(tmp_path_factory.mktemp("m") / "model", model, tok), model, tok


def whole_logprob(model, ctx: list[int], cont: list[int]) -> float:
    """The reference: context+continuation in one plain forward pass."""
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ctx + cont]))[0].float(), -1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


def test_shared_context_scores_equal_whole_sequences(tiny):
    _, model, tok = tiny
    ctx_text = "以下是关于农学的单项选择题\nAnswer:"
    pairs = [encode_pair(tok, ctx_text, c) for c in [" A", " Cat sat", " 龍鄉", " 12 + 345 = 357"]]
    ctx = pairs[0][0]
    assert all(p[0] == ctx for p in pairs) and len({len(c) for _, c in pairs}) > 1
    got = choice_logprobs(model, ctx, [c for _, c in pairs])
    want = [whole_logprob(model, ctx, c) for _, c in pairs]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5


def test_trailing_space_moves_onto_the_continuation(tiny):
    _, _, tok = tiny
    ctx, cont = encode_pair(tok, "Answer: ", "A")
    assert ctx == tok.encode("Answer:") and tok.decode(cont) == " A"
    assert ctx + cont == tok.encode("Answer: A")


def test_pick_acc_and_acc_norm():
    assert pick([-3.0, -1.0, -2.0], ["A", "B", "C"]) == (1, 1)
    assert pick([-2.0, -3.0], ["x", "yyyy"]) == (0, 1)  # -3/4 per character beats -2/1
    assert pick([-1.0, -1.0], ["A", "B"]) == (0, 0)  # a tie goes to the first, as np.argmax


def test_eval_end_to_end_matches_a_hand_computation(tiny, tmp_path, capsys):
    model_dir, model, tok = tiny
    planted(tmp_path / "data" / "cmmlu", "cmmlu")
    planted(tmp_path / "mine", "tmmluplus")
    out = tmp_path / "out"
    cli.main(["eval", str(model_dir), "--tasks", f"cmmlu,{tmp_path / 'mine'}", "--data",
              str(tmp_path / "data"), "--out", str(out), "--shots", "2", "--device", "cpu"])
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results["tasks"]) == {"cmmlu", "mine"}
    for name in ("cmmlu", "mine"):
        task = tasks_from(str(tmp_path / "mine") if name == "mine" else "cmmlu", tmp_path / "data")[0]
        [s] = task.subjects
        right = []
        for q in s.questions:  # by hand: whole sequences, argmax
            text = context(task.kind, s, q, 2)
            scores = [whole_logprob(model, *encode_pair(tok, text, " " + x)) for x in "ABCD"]
            right.append(max(range(4), key=lambda i: scores[i]) == q.answer)
        got = results["tasks"][name]
        assert got["acc"] == pytest.approx(sum(right) / 3) == got["acc_norm"]  # one-letter choices
        assert got["subjects"]["agronomy"]["n"] == 3 and got["shots"] == 2
        assert got["categories"]["Other" if name == "cmmlu" else "other"]["n"] == 3
        assert got["chance"] == pytest.approx(0.25)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| cmmlu | 2 | 3 |" in report and "| 0.2500 |" in report
    for png in ("scores.png", "cmmlu.png", "mine.png"):  # drawn, and linked from the report
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png})" in report
    assert "results.json" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input

def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_inputs_each_say_one_line(tiny, tmp_path, capsys):
    model_dir = str(tiny[0])
    run = ["eval", model_dir, "--out", str(tmp_path / "o"), "--data", str(tmp_path)]
    bad = planted(tmp_path / "cols", "cmmlu")
    (bad / "test" / "agronomy.csv").write_text(",Question,A,B,C,Answer\n0,q,a,b,c,A\n", encoding="utf-8")
    err = one_line_error(run + ["--tasks", str(bad)], capsys)
    assert "agronomy.csv:1" in err and "no d column" in err
    wrong = planted(tmp_path / "letter", "tmmluplus")
    (wrong / "agronomy_test.csv").write_text(TMMLU_HEAD + "q,a,b,c,d,A,x\nq2,a,b,c,d,E,x\n", encoding="utf-8")
    err = one_line_error(run + ["--tasks", str(wrong)], capsys)
    assert "agronomy_test.csv:3" in err and "'E' is not one of the choices A, B, C, D" in err
    (tmp_path / "empty" / "dev").mkdir(parents=True)
    assert "no benchmark CSVs" in one_line_error(run + ["--tasks", str(tmp_path / "empty")], capsys)
    err = one_line_error(run + ["--tasks", "cmmlu,nosuch"], capsys)
    assert "unknown task 'nosuch'" not in err  # cmmlu is checked first: DATA/cmmlu is missing
    assert "cmmlu: no such folder" in err
    err = one_line_error(run + ["--tasks", "nosuch"], capsys)
    assert "unknown task 'nosuch'" in err and "cmmlu, ceval, mmlu, tmmluplus" in err
    # a context too short for the shots: the message says how many fit, and that many run
    long = planted(tmp_path / "long", "mmlu")
    body = " ".join(["The cat sat on the mat near the river."] * 12)
    (long / "dev" / "anatomy_dev.csv").write_text(f'"{body}",a,b,c,d,A\n' * 5, encoding="utf-8")
    err = one_line_error(run + ["--tasks", str(long), "--shots", "5"], capsys)
    fit = int(re.search(r"(\d+) shots fit: use --shots \1", err).group(1))
    assert "anatomy_test.csv" in err and "model's context of 256" in err and fit < 5
    cli.main(run + ["--tasks", str(long), "--shots", str(fit)])
    assert (tmp_path / "o" / "results.json").is_file()


def test_read_csv_line_numbers_count_quoted_newlines(tmp_path):
    f = tmp_path / "x_test.csv"
    f.write_text(TMMLU_HEAD + '"two\nlines",a,b,c,d,A,s\nq,a,b,c,d,Z,s\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"x_test.csv:4: answer 'Z'"):
        read_csv(f)


def test_a_tokenizer_that_adds_a_bos_gets_it_on_the_context(tiny):
    """As lm-eval's HFLM.tok_encode: the tokenizer's own special tokens (a Llama-style BOS)
    start the context, not the continuation; a text already starting with it gets no second."""
    from tokenizers import processors

    from jielong.tokenizer import Tokenizer

    _, _, tok = tiny
    start = "<|im_start|>"
    backend = type(tok.backend).from_str(tok.backend.to_str())
    bos_id = backend.token_to_id(start)
    backend.post_processor = processors.TemplateProcessing(single=f"{start} $A", special_tokens=[(start, bos_id)])
    bos = Tokenizer(backend, {**tok.config, "bos_token": start})
    ctx, cont = encode_pair(bos, "以下是关于农学的单项选择题\n答案：", " A")
    assert ctx == [bos_id, *tok.encode("以下是关于农学的单项选择题\n答案：")] and cont == tok.encode(" A")
    assert encode_pair(bos, start + "答案：", " A")[0] == tok.encode(start + "答案：")
    assert encode_pair(tok, "答案：", " A")[0] == tok.encode("答案：")  # ours adds nothing
