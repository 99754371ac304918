"""`jielong launch slurm` writes an sbatch script that bash accepts and that, run with stand-ins
for scontrol, srun and torchrun, hands torchrun the rendezvous and the jielong command word
for word; `jielong launch torchrun` prints one command a node; bad options are one line."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from jielong import cli
from jielong.errors import UserError
from jielong.launch import slurm, torchrun

# Words a shell would mangle if they were not quoted: spaces, $(…), quotes, a newline, a
# word that looks like the script's own continuation.
WORDS = ["pretrain", "my data.jsonl", "--preset", "124m", "--stop", "$(touch PWNED)", "it's",
         "a\nb", " --x \\", "*"]


def fake(bin_dir: Path, name: str, body: str) -> None:
    (bin_dir / name).write_text("#!/bin/bash\n" + body)
    (bin_dir / name).chmod(0o755)


def test_the_script_runs_one_torchrun_a_node_with_the_command_intact(tmp_path, capsys):
    script = tmp_path / "slurm" / "job.sbatch"
    slurm(["jielong", *WORDS], nodes=2, gpus_per_node=4, partition="gpu", account="proj-1",
          time="1-00:00:00", cpus_per_task=16, out=str(script))
    printed = capsys.readouterr().out
    assert f"sbatch {script}" in printed
    text = script.read_text()
    lines = text.splitlines()
    for want in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--partition=gpu",
                 "--account=proj-1", "--time=1-00:00:00", "--cpus-per-task=16",
                 f"--output={tmp_path / 'slurm'}/%x-%j.out", "--job-name=jielong"):
        assert f"#SBATCH {want}" in lines
    assert all(ln.startswith("# export NCCL") or ln.startswith("# export TORCH_NCCL")
               for ln in lines if "NCCL_" in ln and "export" in ln)  # hints, off until uncommented
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk \'NR == 1\')' in lines
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a big allocation: many names, written one at a time, as a reader that stops at the first
    # line would make the writer die of SIGPIPE (exit 141 under pipefail)
    fake(bin_dir, "scontrol", '[ "$1 $2" = "show hostnames" ] || exit 1\n'
         'echo gpu-a; echo gpu-b; for i in $(seq 3 3000); do echo "gpu-$i"; done\n')
    fake(bin_dir, "srun", 'echo srun >> "$CALLS"\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    fake(bin_dir, "torchrun", 'printf "%s\\0" "$@" > "$ARGS_OUT"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-[a-b]", "CALLS": str(tmp_path / "calls"),
           "ARGS_OUT": str(tmp_path / "args")}
    r = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "rendezvous on gpu-a:29500, job 4242" in r.stdout
    assert (tmp_path / "calls").read_text() == "srun\n"
    argv = (tmp_path / "args").read_text().split("\0")[:-1]
    assert argv == ["--nnodes", "2", "--nproc_per_node", "4", "--rdzv_id", "4242",
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", "gpu-a:29500", "-m", "jielong.cli", *WORDS]
    assert not (tmp_path / "PWNED").exists()


def test_submit_runs_sbatch_or_says_it_is_missing(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(UserError, match="sbatch is not on this machine's PATH"):
        slurm(["pretrain", "d.jsonl"], out=str(tmp_path / "a.sbatch"), submit=True)
    assert (tmp_path / "a.sbatch").exists()  # written all the same, to copy to the cluster
    fake(empty, "sbatch", 'echo "Submitted batch job 77 ($1)"\n')
    result = slurm(["pretrain", "d.jsonl"], out=str(tmp_path / "b.sbatch"), submit=True)
    assert result["sbatch"] == f"Submitted batch job 77 ({tmp_path / 'b.sbatch'})"
    assert "submitting it: sbatch" in capsys.readouterr().out


def test_launch_torchrun_prints_one_command_a_node(capsys):
    lines = torchrun(["pretrain", "my data.jsonl"], nodes=2, gpus_per_node=8, master="10.0.0.1")
    out = capsys.readouterr().out
    assert "# on node 0:" in out and "# on node 1:" in out
    for rank, line in enumerate(lines):
        assert shlex.split(line) == ["torchrun", "--nnodes", "2", "--nproc_per_node", "8",
                                     "--node_rank", str(rank), "--master_addr", "10.0.0.1",
                                     "--master_port", "29500", "-m", "jielong.cli", "pretrain",
                                     "my data.jsonl"]
    assert torchrun(["pretrain", "x"], nodes=3, master="head", node_rank=2)[0].count("--node_rank 2") == 1


@pytest.mark.parametrize("kw, message", [
    (dict(cmd=[]), "give the jielong command to run after `--`"),
    (dict(cmd=["jielong"]), "give the jielong command"),
    (dict(nodes=0), "--nodes 0 must be 1 or more"),
    (dict(gpus_per_node=0), "--gpus_per_node 0"),
    (dict(time="tomorrow"), "--time 'tomorrow' is not a Slurm time"),
    (dict(partition="gpu; rm -rf ~"), "--partition"),
    (dict(account="a b"), "--account"),
    (dict(port=80), "--port 80"),
    (dict(out="my runs/job.sbatch"), "spaces"),
])
def test_bad_slurm_options(tmp_path, kw, message):
    kw = {"cmd": ["pretrain", "d.jsonl"], "out": str(tmp_path / "j.sbatch"), **kw}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("*", r"\*")):
        slurm(**kw)


def test_the_cli_takes_everything_after_the_double_dash(tmp_path, capsys):
    fn, kw = cli.parse(["launch", "slurm", "--nodes", "2", "--out", str(tmp_path / "j.sbatch"), "--",
                        "pretrain", "d.jsonl", "--preset", "124m", "--parallel", "fsdp"])
    assert fn is slurm and kw["nodes"] == 2
    assert kw["cmd"] == ["pretrain", "d.jsonl", "--preset", "124m", "--parallel", "fsdp"]
    with pytest.raises(SystemExit) as e:
        cli.main(["launch", "torchrun", "--nodes", "2", "--", "pretrain", "d.jsonl"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--master None" in err
    with pytest.raises(SystemExit):
        cli.main(["launch", "torchrun", "--nodes", "2", "--master", "h", "--node_rank", "2", "--", "x"])
    assert "--node_rank 2 must be between 0 and 1" in capsys.readouterr().err
