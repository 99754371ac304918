"""FSDP2 beside DDP on CPU (gloo, torchrun): the same global batch gives the same losses on 1
and 2 processes, a sharded run resumes exactly on 2 and on 1 process, the consolidated model
loads in transformers, LoRA SFT shards too, and activation checkpointing changes nothing.

Four torchrun launches in all (each ~3 s to start, mostly waiting), each beside the
in-process one-process run it is compared with.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_corpus, write_jsonl
from safetensors.torch import load_file

from jielong.checkpoint import load_model, save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.lora import LoraConfig
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.loop import TrainConfig, check_layout
from jielong.train.parallel import checkpoint_blocks, choose
from jielong.train.pretrain import pretrain
from jielong.train.sft import sft

# A constant schedule after one warmup step, so a run of 3 steps and one of 6 agree on 1–3.
ARGS = ["--preset", "test", "--vocab_size", "320", "--seq_len", "32", "--batch_size", "4",
        "--warmup_steps", "2", "--eval_every", "50", "--lr", "3e-3", "--device", "cpu",
        "--steps", "6", "--save_every", "3"]
CFG = dict(steps=6, save_every=3, batch_size=4, warmup_steps=2, eval_every=50, lr=3e-3, device="cpu")


def start(*args, cwd) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 -m jielong.cli ARGS…`, started."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "jielong.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=env)


def finished(proc: subprocess.Popen) -> str:
    """The stdout of a started run, once it has succeeded."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[:3000] + "\n…\n" + err[-2000:]
    return out


def losses(run) -> list[float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process reference (grad_accum 2, in-process) and the 2-process FSDP and DDP
    runs (grad_accum 1): the same global batch of 2 micro-batches a step. The three run at
    once (torchrun spends much of its start waiting)."""
    d = tmp_path_factory.mktemp("fsdp")
    corpus = write_jsonl(d / "docs.jsonl", [{"text": t} for t in tiny_corpus()])
    fsdp = start("pretrain", str(corpus), "--out", str(d / "fsdp"), *ARGS, "--parallel", "fsdp", cwd=d)
    ddp = start("pretrain", str(corpus), "--out", str(d / "ddp"), *ARGS, "--parallel", "ddp", cwd=d)
    pretrain([str(corpus)], out=str(d / "ref"), preset="test", vocab_size=320, seq_len=32,
             train=TrainConfig(**CFG, grad_accum=2, parallel="fsdp"))
    return d, corpus, finished(fsdp), finished(ddp)


def test_two_process_fsdp_and_ddp_equal_one_process(runs):
    d, corpus, fsdp, ddp = runs
    ref = losses(d / "ref")
    assert len(ref) == 6 and ref[-1] < ref[0]
    assert "parallel: fsdp on 2 processes" in fsdp and fsdp.count("done: 6 steps") == 1
    assert losses(d / "fsdp") == pytest.approx(ref, abs=1e-5)
    step = d / "fsdp" / "checkpoints" / "step-0000006"  # DCP: one shard file per rank
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "trainer_state.pt"} == {p.name for p in step.iterdir()}
    assert sorted(p.name for p in (d / "fsdp" / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    assert "parallel: ddp on 2 processes" in ddp
    assert losses(d / "ddp") == pytest.approx(ref, abs=1e-5)


def test_sharded_run_resumes_exactly_on_two_and_on_one_process(runs):
    """Killed after its step-3 checkpoint (and in the middle of writing step 6)."""
    d, corpus = runs[:2]
    ref = losses(d / "ref")
    for name in ("on2", "on1"):
        shutil.copytree(d / "fsdp", d / name)
        shutil.rmtree(d / name / "checkpoints" / "step-0000006")
        shutil.rmtree(d / name / "model")
        half = d / name / "checkpoints" / ".step-0000006.tmp"  # a save cut short
        half.mkdir()
        (half / "__0_0.distcp").write_bytes(b"\0")
    on2 = start("pretrain", str(corpus), "--out", str(d / "on2"), *ARGS, "--parallel", "fsdp",
                "--activation_checkpointing", "--resume", cwd=d)
    one = dict(out=str(d / "on1"), preset="test", vocab_size=320, seq_len=32, resume=True)
    with pytest.raises(UserError, match="resume with --grad_accum 2$"):  # the global batch is kept
        pretrain([str(corpus)], **one, train=TrainConfig(**CFG, parallel="fsdp"))
    pretrain([str(corpus)], **one, train=TrainConfig(**CFG, grad_accum=2, parallel="fsdp"))
    assert losses(d / "on1") == pytest.approx(ref, abs=1e-5)
    assert sorted(p.name for p in (d / "on1" / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    r = finished(on2)
    assert "resuming from" in r and "step-0000003" in r
    assert losses(d / "on2") == pytest.approx(ref, abs=1e-5)


def test_consolidated_model_loads_in_transformers(runs):
    transformers = pytest.importorskip("transformers")
    d = runs[0] / "fsdp" / "model"
    ours = load_model(d).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 8]])
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-4)
    ref = load_model(runs[0] / "ref" / "model").state_dict()  # gathered = the 1-process weights
    assert all(torch.allclose(v, ref[k], atol=1e-5) for k, v in ours.state_dict().items())


def test_lora_sft_under_fsdp_matches_one_process(tmp_path):
    tok = train_tokenizer(tiny_corpus(200), vocab_size=400)
    torch.manual_seed(0)
    base = save_model(tmp_path / "base", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    chats = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in [("阿明的寵物是什麼？", "貓。"), ("阿明的宠物是什么？", "猫。"), ("What does Mei keep?", "A goose.")] * 8])
    common = ["--model", str(base), "--method", "lora", "--steps", "3", "--batch_size", "2",
              "--lr", "1e-2", "--seq_len", "64", "--warmup_steps", "1", "--eval_every", "100",
              "--device", "cpu", "--parallel", "fsdp"]
    two = start("train", "sft", str(chats), "--out", str(tmp_path / "two"), *common, cwd=tmp_path)
    sft([str(chats)], model=str(base), out=str(tmp_path / "one"), method="lora", seq_len=64,
        train=TrainConfig(steps=3, batch_size=2, grad_accum=2, lr=1e-2, warmup_steps=1, eval_every=100,
                          device="cpu", parallel="fsdp"), lora=LoraConfig())
    assert "parallel: fsdp on 2 processes" in finished(two)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    two, one = (load_file(tmp_path / r / "adapter" / "adapter_model.safetensors") for r in ("two", "one"))
    assert set(two) == set(one) and len(one) == 28  # 7 projections × 2 layers × (A, B)
    for k in one:
        assert torch.allclose(two[k], one[k], atol=1e-5), k
    assert any(one[k].abs().sum() > 0 for k in one if "lora_B" in k)  # it trained


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=64))
    ids = torch.randint(0, 64, (2, 12))

    def grads():
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    plain_loss, plain = grads()
    checkpoint_blocks(model)
    ac_loss, ac = grads()
    assert ac_loss == plain_loss
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ac, plain, strict=True))


def test_impossible_layouts_are_one_line(tmp_path):
    state = {"world": 2, "train_config": {"grad_accum": 3, "batch_size": 4}}  # 6 micro-batches
    check_layout(state, TrainConfig(grad_accum=6, batch_size=4), 1, tmp_path)  # kept: fine
    for world, cfg, message in [
        (4, TrainConfig(grad_accum=1, batch_size=4), "4 processes cannot share evenly; resume on a "
                                                     "number of processes that divides 6"),
        (3, TrainConfig(grad_accum=1, batch_size=4), "on 3 processes resume with --grad_accum 2"),
        (2, TrainConfig(grad_accum=3, batch_size=8), "was trained with --batch_size 4"),
    ]:
        with pytest.raises(UserError) as e:
            check_layout(state, cfg, world, tmp_path)
        assert message in str(e.value) and "\n" not in str(e.value)
    assert choose("fsdp", Transformer(preset("test", vocab_size=64)), torch.device("cpu"), 1)[0] == "plain"
    assert choose("auto", Transformer(preset("test", vocab_size=64)), torch.device("cpu"), 2)[0] == "ddp"
    with pytest.raises(UserError, match="choose auto, ddp or fsdp"):
        choose("zero3", Transformer(preset("test", vocab_size=64)), torch.device("cpu"), 2)
