"""Parity with lm-evaluation-harness (issue 16): on the same tiny model and the same local
CMMLU-layout files, every per-choice log-likelihood `jielong eval` computes (one question
alone, and in batches of questions after their subject's shared prefix) equals the one lm-eval
logs (within 1e-4) and the accuracies are identical, with 0 and 2 shots — for a tokenizer
that adds nothing (ours) and for one whose post-processor adds a BOS (as Llama's).

lm-eval runs in-process on the saved Hugging Face folder, offline, from a task YAML written
here: it includes lm-eval's own `cmmlu/cmmlu_{subject}.yaml` (prompt, description, shots,
metrics) and only points its dataset at the planted CSVs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_corpus

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.eval.benchmarks import context, continuations, load_task
from jielong.eval.command import eval_cmd
from jielong.eval.loglikelihood import choice_logprobs, encode_pair
from jielong.hub import open_model
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

lm_eval = pytest.importorskip("lm_eval")

OFFLINE = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DEV = [("1+1等于几？", "一", "二", "三", "四", "B"), ("天空是什么颜色？", "红", "蓝", "绿", "黄", "B")]
TEST = [("龍鄉在哪裡？", "北", "南", "東", "西", "C"), ("猫吃什么？", "鱼", "石头", "铁", "沙", "A"),
        ("  今天天气很好吗？ ", "好", "不好", "很好", "不知道", "D"),
        ('"书店", 里有什么？', "书", "猫", "河", "龙", "A"), ("The cat sat on the ___.", "mat", "河", "鹅", "书", "B")]
SUBJECTS = ("agronomy", "anatomy")
SHOTS = (0, 2)


def csv_text(rows) -> str:
    def q(s):
        return '"' + s.replace('"', '""') + '"'
    return ",Question,A,B,C,D,Answer\n" + "".join(f"{i},{','.join(map(q, r))}\n" for i, r in enumerate(rows))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(data folder holding cmmlu/, {variant: model folder}) — variant "plain": our tokenizer;
    "bos": the same with a post-processor that puts <|im_start|> first, as Llama's puts <s>."""
    root = tmp_path_factory.mktemp("parity")
    for split, rows in (("dev", DEV), ("test", TEST)):
        for i, subject in enumerate(SUBJECTS):
            f = root / "data" / "cmmlu" / split / f"{subject}.csv"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(csv_text(rows[i:] + rows[:i]), encoding="utf-8")  # another order each
    texts = tiny_corpus(60) + ["答案： A\n\n答案： B\n答案： C\n答案： D 以下是关于农学的单项选择题"] * 5
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    plain = save_model(root / "plain", Transformer(preset("test", vocab_size=tok.vocab_size)).eval(), tok)
    bos = root / "bos"
    shutil.copytree(plain, bos)
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_file(str(bos / "tokenizer.json"))
    start = "<|im_start|>"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{start} $A", pair=f"{start} $A $B", special_tokens=[(start, backend.token_to_id(start))])
    backend.save(str(bos / "tokenizer.json"))
    config = json.loads((bos / "tokenizer_config.json").read_text(encoding="utf-8"))
    (bos / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": start}, ensure_ascii=False),
                                               encoding="utf-8")
    return root / "data", {"plain": plain, "bos": bos}


def run_lm_eval(model_dir: Path, data: Path, tmp_path: Path) -> dict:
    """lm-eval's `simple_evaluate`, in one run, on tasks parity_cmmlu_{subject}_{k}shot for k in
    SHOTS, read from the planted CSVs."""
    from lm_eval.tasks import TaskManager

    yamls = tmp_path / "tasks"
    yamls.mkdir()
    own = Path(lm_eval.__file__).parent / "tasks" / "cmmlu"
    names = []
    for subject in SUBJECTS:
        for k in SHOTS:
            names.append(f"parity_cmmlu_{subject}_{k}shot")
            config = {"include": str(own / f"cmmlu_{subject}.yaml"), "task": names[-1], "num_fewshot": k,
                      "dataset_path": "csv", "dataset_name": None,
                      "dataset_kwargs": {"data_files": {s: str(data / "cmmlu" / s / f"{subject}.csv")
                                                        for s in ("dev", "test")},
                                         "cache_dir": str(tmp_path / "hf_datasets")}}
            (yamls / f"{names[-1]}.yaml").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32,device=cpu", tasks=names,
        task_manager=TaskManager(include_path=str(yamls), include_defaults=False),
        log_samples=True, batch_size=1)


@pytest.mark.parametrize("variant", ["plain", "bos"])
def test_loglikelihoods_and_accuracies_equal_lm_evals(planted, variant, tmp_path, monkeypatch):
    for name in OFFLINE:
        monkeypatch.setenv(name, "1")
    data, models = planted
    theirs = run_lm_eval(models[variant], data, tmp_path)
    net, tok, _ = open_model(models[variant], dtype=torch.float32)
    task = load_task("cmmlu", data)
    for shots in SHOTS:
        out = tmp_path / f"out{shots}"
        ours = eval_cmd(str(models[variant]), tasks="cmmlu", data=str(data), out=str(out), shots=shots,
                        device="cpu", dtype="float32", batch_size=2)["tasks"]["cmmlu"]["subjects"]
        rows = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
        worst, accs = 0.0, []
        for subject in task.subjects:
            name = f"parity_cmmlu_{subject.name}_{shots}shot"
            samples = sorted(theirs["samples"][name], key=lambda s: s["doc_id"])
            assert len(samples) == len(subject.questions) == len(TEST)
            for q, sample in zip(subject.questions, samples, strict=True):
                text = context("cmmlu", subject, q, shots)
                assert [tuple(a) for a in sample["arguments"]] == [(text, c) for c in continuations(q)]
                assert sample["target"] == q.answer
                pairs = [encode_pair(tok, text, c) for c in continuations(q)]
                got = choice_logprobs(net, pairs[0][0], [c for _, c in pairs])  # one question alone
                batched = rows.pop(0)  # `jielong eval`'s: in batches after the subject's shared prefix
                assert batched["subject"] == subject.name and batched["where"] == q.where
                want = [r[0] for r in sample["filtered_resps"]]
                both = got + batched["logprobs"]
                worst = max(worst, *(abs(a - b) for a, b in zip(both, want * 2, strict=True)))
            for m in ("acc", "acc_norm"):
                assert ours[subject.name][m] == pytest.approx(theirs["results"][name][f"{m},none"], abs=1e-12), \
                    (name, m)
            accs.append(ours[subject.name]["acc"])
        print(f"{variant} tokenizer, {shots} shots: max |Δ log-likelihood| {worst:.3g}, acc {accs}")
        assert worst <= 1e-4, (variant, shots)
