"""`jielong recipe`: every recipe in recipes/ read and checked against the commands it names;
each one run end to end, shrunk by `--set`, on a tiny model and tiny data in 繁/简/English
(real DRCD, CMRC 2018, COLD and poems from ../shared/data where a recipe reads them); resume;
the argument list never a shell line; a bad recipe one line naming file:line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_corpus, write_jsonl

from jielong import cli
from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.files import read_yaml
from jielong.model import Transformer
from jielong.recipe import Recipes, read_metric
from jielong.tokenizer import train_tokenizer

RECIPES = ROOT / "recipes"
USE_CASES = ["translation", "summarization", "moderation", "qa", "classification", "content", "tutor"]
# The shrunk version: one optimizer step, two test items, a few new tokens.
TINY = {"steps": 1, "batch_size": 2, "seq_len": 128, "r": 2, "alpha": 4, "limit": 2,
        "max_new_tokens": 4, "device": "cpu"}


def recipes() -> Recipes:
    return Recipes(cli.parse, cli._commands)


def run(name: str, out: Path, **sets) -> dict:
    args = [f"{k}={v}" for k, v in sets.items()]
    return cli.run(["recipe", "run", str(RECIPES / f"{name}.yaml"), "--out", str(out),
                    *(["--set", *args] if args else [])])


def shrink(name: str, **data) -> dict:
    """TINY, keeping only the vars this recipe has, plus its data."""
    have = recipes().check(RECIPES / f"{name}.yaml").vars
    return {**{k: v for k, v in TINY.items() if k in have}, **data}


def chats(pairs) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A test-preset model with room for a DRCD passage and a judge's prompt."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = train_tokenizer(tiny_corpus(60), vocab_size=300)
    torch.manual_seed(0)
    cfg = preset("test", vocab_size=tok.vocab_size, max_position_embeddings=2048,
                 eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    path = save_model(tmp_path_factory.mktemp("recipes") / "base", Transformer(cfg), tok)
    yield path
    torch.set_num_threads(before)


def check_summary(summary: dict, out: Path, lo: float, hi: float) -> None:
    assert [s["status"] for s in summary["steps"]] == ["ran"] * len(summary["steps"])
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert saved["metrics"] == summary["metrics"]
    report = (out / "report.md").read_text(encoding="utf-8")
    for m in summary["metrics"]:
        assert lo <= m["value"] <= hi, m
        assert m["name"] in report
        # the number is the one in the file the metric names, read here by hand
        value = json.loads(Path(m["file"]).read_text(encoding="utf-8"))
        for k in m["key"]:
            value = next(iter(value.values())) if k == "*" else value[k]
        assert m["value"] == pytest.approx(value)


# ----------------------------------------------------------------------------- every recipe


def test_every_recipe_in_the_folder_is_read_and_checked():
    found = {p.stem for p in RECIPES.glob("*.yaml")}
    assert set(USE_CASES) <= found
    for path in sorted(RECIPES.glob("*.yaml")):
        raw = read_yaml(path, "missing")
        if "steps" not in raw:  # an options file for --config (demo.yaml, 124m.yaml)
            fn, kwargs = cli.parse(["pretrain", "corpus.jsonl", "--config", str(path)])
            assert fn.__name__ == "pretrain" and kwargs["train"].steps == raw["train"]["steps"]
            continue
        recipe = recipes().check(path)
        assert recipe.vars["base"] and recipe.description and recipe.metrics
        for step in recipe.steps:
            assert step.fn is not None and step.creates.startswith(recipe.vars["out"]), step
        assert all(m["file"].startswith(recipe.vars["out"]) for m in recipe.metrics)


def test_recipe_list_names_every_use_case(capsys):
    listed = cli.run(["recipe", "list", "--dir", str(RECIPES)])
    assert {r["name"] for r in listed if r["kind"] == "recipe"} == set(USE_CASES)
    assert not any("error" in r for r in listed)
    assert "jielong recipe run" in capsys.readouterr().out


# ----------------------------------------------------------------------------- end to end, shrunk


def test_translation(base, tmp_path):
    pairs = [("將下面的英文翻譯成繁體中文。\n\nMing lives in Dragon Town.", "阿明住在龍鄉。"),
             ("将下面的简体中文翻译成英文。\n\n今天天气很好。", "The weather is good today."),
             ("將下面的繁體中文翻譯成簡體中文。\n\n書店裡有很多書。", "书店里有很多书。")]
    train = write_jsonl(tmp_path / "train.jsonl", chats(pairs))
    test = write_jsonl(tmp_path / "test.jsonl", [{"source": "The cat sat on the mat.", "target": "貓坐在墊子上。"},
                                                 {"source": "阿明养了一只猫。", "target": "Ming keeps a cat."}])
    out = tmp_path / "run"
    s = run("translation", out, **shrink("translation", base=base, train=train, test=test))
    check_summary(s, out, 0, 100)
    assert (out / "compare" / "compare.json").is_file()
    # resume: a step whose output is gone runs again, the others are skipped
    (out / "eval-lora" / "results.json").unlink()
    again = run("translation", out, **shrink("translation", base=base, train=train, test=test))
    assert [x["status"] for x in again["steps"]] == ["skipped", "skipped", "ran", "skipped"]
    assert again["metrics"] == s["metrics"]


def test_summarization(base, tmp_path):
    texts = [("阿明住在龍鄉，他養了一隻貓。每天早上他帶貓去河邊散步，然後去書店工作。", "阿明在龍鄉養貓，在書店工作。"),
             ("今天天气很好，我们去河边散步，看见很多人在钓鱼。", "我们在河边散步。"),
             ("Mei lives in Maple town and keeps a goose. The goose follows her to the market.",
              "Mei's goose follows her.")]
    train = write_jsonl(tmp_path / "train.jsonl", chats((f"請用一兩句話概括下面這段文字。\n\n{t}", s) for t, s in texts))
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": t, "summary": s} for t, s in texts[:2]])
    out = tmp_path / "run"
    check_summary(run("summarization", out, **shrink("summarization", base=base, train=train, test=test)),
                  out, 0, 100)


def test_qa_on_real_drcd_and_cmrc(base, tmp_path, shared_data):
    train = write_jsonl(tmp_path / "train.jsonl", chats([
        ("請根據文章回答問題。\n\n文章：阿明住在龍鄉。\n\n問題：阿明住在哪裡？", "龍鄉"),
        ("请根据文章回答问题。\n\n文章：阿明养了一只猫。\n\n问题：阿明养了什么？", "猫"),
        ("Answer from the passage.\n\nPassage: Mei keeps a goose.\n\nQuestion: What does Mei keep?",
         "a goose")]))
    out = tmp_path / "run"
    s = run("qa", out, **shrink("qa", base=base, train=train, data=shared_data, limit=1))
    check_summary(s, out, 0, 100)
    samples = (out / "eval-lora" / "samples.jsonl").read_text(encoding="utf-8")
    assert "歐洲" in samples and "光荣和ω-force" in samples  # the real first questions' answers


def test_classification_on_real_poems_and_plays(base, tmp_path, shared_data):
    def lines(name: str, n: int) -> list[str]:
        with open(shared_data / name, encoding="utf-8") as f:
            return [json.loads(next(f))["text"][:40] for _ in range(n)]

    plays = [x for x in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:3000]
             .split("\n\n") if x.strip()][:4]
    rows = [{"text": t, "label": "tang"} for t in lines("tang-poems-zh-hant.jsonl", 4)] + \
           [{"text": t, "label": "song"} for t in lines("song-ci-zh-hans.jsonl", 4)] + \
           [{"text": t[:60], "label": "shakespeare"} for t in plays]
    train = write_jsonl(tmp_path / "train.jsonl", rows[0::2])
    test = write_jsonl(tmp_path / "test.jsonl", rows[1::2])
    out = tmp_path / "run"
    s = run("classification", out, **shrink("classification", base=base, train=train, test=test,
                                             max_len=32))
    check_summary(s, out, 0, 1)
    report = json.loads((out / "classifier" / "report.json").read_text())
    assert set(report["labels"]) == {"tang", "song", "shakespeare"}


def test_moderation_on_real_cold(base, tmp_path, shared_data):
    comments = tmp_path / "comments.txt"
    comments.write_text("我真的撐不下去了，想吃一整瓶安眠藥\n今天天气不错\nHow do I kill a process on Linux?\n",
                        encoding="utf-8")
    out = tmp_path / "run"
    s = run("moderation", out, **shrink("moderation", base=base, cold=shared_data / "cold",
                                         comments=comments, cold_rows=8, cold_dev_rows=8, repeat=1,
                                         max_len=32))
    check_summary(s, out, 0, 3)
    assert json.loads((out / "guard" / "guard_report.json").read_text())["cold_dev_n"] == 8
    assert json.loads((out / "moderate" / "report.json").read_text())["rows"] == 3


def test_content_judged_against_the_base(base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chats([
        ("寫一句關於龍鄉的廣告詞。", "龍鄉，河水清，書香濃。"),
        ("写一句关于枫镇的广告词。", "枫镇，枫叶红，鹅声欢。"),
        ("Write a slogan for Maple town.", "Maple town: red leaves, happy geese.")]))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"question": "寫一句關於書店的廣告詞。"},
                                                       {"question": "Write a slogan for a river."}])
    out = tmp_path / "run"
    s = run("content", out, **shrink("content", base=base, judge=base, train=train, prompts=prompts,
                                      answer_tokens=4))
    check_summary(s, out, 0, 1)
    judged = json.loads((out / "judge" / "results.json").read_text())
    assert judged["pairs"]["pairs"] == 2 and judged["model_a"] == "merged"


def test_tutor_held_out_loss(base, tmp_path):
    explain = [("為什麼天空是藍色的？", "因為陽光中的藍光被空氣散射得最多，所以我們看到藍色。"),
               ("为什么冰会浮在水上？", "因为冰的密度比水小，所以冰会浮起来。"),
               ("Why do we add numbers in columns?", "Each column is a place value, so we add ones, then tens.")]
    train = write_jsonl(tmp_path / "train.jsonl", chats(explain))
    val = write_jsonl(tmp_path / "val.jsonl", chats([("為什麼要洗手？", "因為手上有細菌，洗手可以把細菌沖走。")]))
    out = tmp_path / "run"
    s = run("tutor", out, **shrink("tutor", base=base, train=train, val=val, eval_every=1))
    check_summary(s, out, 0, math.log(300) + 3)
    last = [json.loads(x) for x in (out / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert s["metrics"][0]["value"] == pytest.approx([r for r in last if "val_loss" in r][-1]["val_loss"])


# ----------------------------------------------------------------------------- the runner


MINI = """description: moderate one file
vars:
  base: none
  files: [in.txt]
steps:
  - name: mod
    run: moderate
    args:
      files: ${files}
      out: ${out}/m
    creates: ${out}/m/report.json
metrics:
  - name: rows
    file: ${out}/m/report.json
    key: rows
"""


def test_values_are_arguments_never_a_shell_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "a b; touch PWNED.txt"
    odd.write_text("你好\n你好嗎\nhello $(touch PWNED2)\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(MINI, encoding="utf-8")
    s = cli.run(["recipe", "run", "r.yaml", "--set", f"files=['{odd}']", "--out", "o"])
    assert s["metrics"][0]["value"] == 3 and s["steps"][0]["status"] == "ran"
    assert not list(tmp_path.glob("PWNED*"))
    printed = capsys.readouterr().out
    assert "[1/1] mod: jielong moderate" in printed and "[1/1] mod: done" in printed
    assert "'" + str(odd) + "'" in printed  # shown quoted, as a shell would need it
    again = cli.run(["recipe", "run", "r.yaml", "--set", f"files=['{odd}']", "--out", "o"])
    assert again["steps"][0]["status"] == "skipped"
    assert "skipped, o/m/report.json exists" in capsys.readouterr().out
    forced = cli.run(["recipe", "run", "r.yaml", "--set", f"files=['{odd}']", "--out", "o", "--force"])
    assert forced["steps"][0]["status"] == "ran"
    # a value that looks like an option is still the option's value
    (tmp_path / "r.yaml").write_text(MINI.replace("out: ${out}/m", "out: ${out}/m\n      field: --text"))
    step = recipes().check("r.yaml").steps[0]
    assert step.kwargs["field"] == "--text" and "--field=--text" in step.argv


@pytest.mark.parametrize("edit, message", [
    (("run: moderate", "run: moderat"), r"r\.yaml:7: unknown command `moderat` \(did you mean `moderate`\?\)"),
    (("run: moderate", "run: eval"), r"r\.yaml:7: `eval` is a group; name one of its commands: eval run"),
    (("      out: ${out}/m", "      outt: ${out}/m"), r"r\.yaml:10: `moderate` has no option 'outt' \(did you mean 'out'\?\)"),
    (("      files: ${files}\n", ""), r"r\.yaml:6: step 'mod' needs `files`"),
    (("    creates: ${out}/m/report.json\n", ""), r"r\.yaml:6: step has no `creates:`"),
    (("${out}/m\n", "${outdir}/m\n"), r"r\.yaml:10: \$\{outdir\} is not a var of this recipe; its vars: out, base, files"),
    (("    key: rows", "    key: rows\n    key: flagged"), r"r\.yaml:16: not valid YAML: 'key' is given twice \(first on line 15\)"),
    (("  files: [in.txt]", "  files: [in.txt"), r"r\.yaml:\d+: not valid YAML"),
    (("steps:", "stepz:"), r"r\.yaml:5: unknown recipe key 'stepz'; a recipe has description, metrics, name, steps, vars"),
    (("  base: none\n", ""), r"r\.yaml:2: vars has no `base`"),
    (("      out: ${out}/m", "      out: ${out}/m\n      safety: [a, b]"),
     r"r\.yaml:6: step 'mod': unrecognized arguments: b"),
    (("run: moderate", "run: tokenizer train"),
     r"r\.yaml:9: `tokenizer train` has no option 'files' \(did you mean 'field'\?\); see jielong tokenizer train --help"),
    (("      files: ${files}", "      data: ${files}\n      vocab_size: lots\n      min_frequency: 2"),
     r"r\.yaml:6: step 'mod': argument --vocab_size: invalid int value: 'lots'"),
])
def test_a_bad_recipe_is_one_line_naming_file_and_line(tmp_path, monkeypatch, edit, message):
    monkeypatch.chdir(tmp_path)
    text = MINI if "vocab_size" not in edit[1] else MINI.replace("run: moderate", "run: tokenizer train")
    assert edit[0] in text
    (tmp_path / "r.yaml").write_text(text.replace(edit[0], edit[1]), encoding="utf-8")
    with pytest.raises(UserError, match=message) as e:
        recipes().check("r.yaml")
    assert "\n" not in str(e.value)


def test_bad_command_lines_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(MINI.replace("${files}", "[in.txt]\n      batch: 2"), encoding="utf-8")
    for argv, said in ((["r.yaml"], "r.yaml:10: `moderate` has no option 'batch'"),
                       (["nope"], "nope: no such recipe file"),
                       (["r.yaml", "--set", "files"], "--set files: write NAME=VALUE"),
                       (["r.yaml", "--set", "size=2"], "r.yaml has no var 'size'; its vars: base, files")):
        with pytest.raises(SystemExit) as e:
            cli.main(["recipe", "run", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert said in err
    # a step's own failure names the step; a metric's key that is not there names the file
    (tmp_path / "r.yaml").write_text(MINI, encoding="utf-8")
    with pytest.raises(UserError, match=r"r\.yaml:6: step 'mod' failed: .*in\.txt"):
        cli.run(["recipe", "run", "r.yaml", "--out", "o"])
    (tmp_path / "in.txt").write_text("hi\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(MINI.replace("key: rows", "key: rowz"), encoding="utf-8")
    with pytest.raises(UserError, match=r"r\.yaml:13: metric 'rows': o/m/report\.json has no rowz \(there: rows, flagged"):
        cli.run(["recipe", "run", "r.yaml", "--out", "o"])
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["metrics"][0]["value"] is None


def test_read_metric_paths_by_hand(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"generate": {"translate:x": {"chrf": 41.5}}, "runs": [{"em": 2}]}))
    metric = {"name": "m", "file": str(f), "line": 3}
    assert read_metric({**metric, "key": ["generate", "*", "chrf"]}, Path("r.yaml")) == 41.5
    assert read_metric({**metric, "key": ["runs", "0", "em"]}, Path("r.yaml")) == 2.0
    with pytest.raises(UserError, match=r"r\.yaml:3: metric 'm': .* is \{'chrf': 41\.5\}, not a number"):
        read_metric({**metric, "key": ["generate", "translate:x"]}, Path("r.yaml"))
