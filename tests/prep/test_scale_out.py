"""`jielong data clean` off this machine's processes: on a private Ray cluster started
inside the test (Ray 2.60 will not bind to loopback alone; its token authentication keeps the
cluster private), and as Slurm job scripts written by a dry run, then run the way Slurm would
run them. Both must give the local executor's output on the planted corpus of
test_data_pipeline (English, 繁, 简; duplicates, a short line, broken records, a page)."""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import dill
import pytest
from datatrove.executor import slurm as dt_slurm
from datatrove.executor.ray import RayPipelineExecutor
from datatrove.utils.logging import setup_default_logger
from test_data_pipeline import planted

from jielong import cli
from jielong.errors import UserError
from jielong.prep.cluster import check_stage
from jielong.prep.finish import Finish
from jielong.prep.readers import InputReader
from jielong.prep.tally import Tally

OPTIONS = ["--tasks", "2", "--shard_docs", "4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    return planted(tmp_path_factory.mktemp("scale"))


@pytest.fixture(scope="module")
def local(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    cli.run(["data", "clean", *corpus, "--out", str(out), "--workers", "1", *OPTIONS])
    return out


def result(out: Path) -> dict:
    """What a run leaves that must not depend on where it ran: the shards, the dropped
    documents and stats.json without its timings and output folder."""
    files = {str(p.relative_to(out)): p.read_text(encoding="utf-8")
             for p in sorted([*(out / "data").iterdir(), *(out / "dropped").iterdir()])}
    stats = json.loads((out / "stats.json").read_text())
    for row in stats["steps"]:
        row.pop("seconds", None)
    stats.pop("stage2_s")
    stats["options"].pop("out")
    return {"files": files, "stats": stats}


@pytest.mark.filterwarnings("ignore:placement_group:DeprecationWarning")  # datatrove's use of ray
def test_ray_cluster_gives_the_local_output(corpus, local, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    started, init = [], ray.init

    def spy(*a, **kw):
        started.append(kw)
        return init(*a, **kw)

    monkeypatch.setattr(ray, "init", spy)
    out = tmp_path / "out"
    stats = cli.run(["data", "clean", *corpus, "--out", str(out), "--executor", "ray", "--workers", "2",
                     *OPTIONS])
    assert [(k["address"], k["num_cpus"]) for k in started] == [("local", 2)]
    assert not ray.is_initialized()                      # the private cluster is shut down
    want = result(local)
    assert want["stats"]["output"]["docs"] == 8 and len(want["files"]) == 7
    assert result(out) == want
    assert stats["output"] == json.loads((local / "stats.json").read_text())["output"]
    assert sorted(p.name for p in (out / "logs" / "stage1" / "completions").iterdir()) == ["00000", "00001"]


def directives(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script.read_text(), re.M))


def test_slurm_dry_run_writes_the_jobs_and_they_run_this_pipeline(corpus, local, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    path_before = shutil.which("sbatch")
    got = cli.run(["data", "clean", *corpus, "--out", str(out), "--executor", "slurm", "--slurm_partition",
                   "cpu-small", "--slurm_time", "2:00:00", "--cpus_per_task", "3", "--mem_per_cpu_gb", "4",
                   "--workers", "1", "--dry_run", *OPTIONS])
    printed = capsys.readouterr().out
    assert got is None and shutil.which("sbatch") == path_before      # the stand-in is gone
    folder = out / "slurm"
    assert sorted(p.name for p in folder.glob("*.sh")) == [
        "1-jielong-clean-tasks.sh", "2-jielong-clean-stats.sh", "3-jielong-finish-tasks.sh",
        "4-jielong-finish-stats.sh", "submit.sh"]
    s1, stats1, s2, stats2 = (directives(p) for p in sorted(folder.glob("[1-4]-*.sh")))
    assert s1["array"] == "0-1%1" and s2["array"] == "0-0"            # 2 tasks, one at a time; then 1
    for d in (s1, s2):
        assert (d["partition"], d["time"], d["cpus-per-task"], d["mem-per-cpu"]) == ("cpu-small", "2:00:00", "3", "4G")
    assert "dependency" not in s1 | s2 | stats1 | stats2              # on the sbatch lines instead
    submit = (folder / "submit.sh").read_text().splitlines()
    sbatch = [x for x in submit if "sbatch" in x]
    assert sbatch[0].startswith("job1=$(sbatch --parsable --export=ALL,RUN_OFFSET=0 ") and "dependency" not in sbatch[0]
    assert "--dependency=afterok:$job1 " in sbatch[1] and "2-jielong-clean-stats.sh" in sbatch[1]
    assert "--dependency=afterok:$job1 " in sbatch[2] and sbatch[2].endswith("3-jielong-finish-tasks.sh)")
    assert "--dependency=afterok:$job3 " in sbatch[3]
    assert printed.count("  sbatch ") == 4 and "submit.sh" in printed

    # the command each array task runs, run here as Slurm would: rank from SLURM_ARRAY_TASK_ID
    piks = []
    for script, d in ((folder / "1-jielong-clean-tasks.sh", s1), (folder / "3-jielong-finish-tasks.sh", s2)):
        cmd = script.read_text().strip().splitlines()[-1].split()
        assert cmd[:4] == ["srun", "-l", "-n", "1"] and cmd[4] == "launch_pickled_pipeline"
        piks.append((Path(cmd[5]), int(d["array"].split("-")[1].split("%")[0]) + 1))
    with open(piks[0][0], "rb") as f:
        stage1 = dill.load(f)
    assert [type(s) for s in stage1.pipeline[:2]] == [InputReader, Tally] and stage1.world_size == 2
    assert stage1.pipeline[0].files == sorted(str(p) for p in Path(corpus[0]).iterdir())
    monkeypatch.setattr(dt_slurm, "expand_slurm_nodelist", lambda nodes: [nodes])   # scontrol's job
    for k in ("NODE_RANK", "EXECUTOR", "NODE_IPS", "CPUS_PER_TASK", "MEM_PER_CPU", "GPUS_ON_NODE"):
        monkeypatch.setenv(f"DATATROVE_{k}", "")                       # restored after the test
    monkeypatch.setenv("SLURM_NODELIST", "node1")
    monkeypatch.setenv("RUN_OFFSET", "0")
    usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        for pik, n in piks:
            for rank in range(n):
                monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(rank))
                with open(pik, "rb") as f:
                    executor = dill.load(f)
                if pik == piks[1][0]:
                    assert [type(s) for s in executor.pipeline] == [Finish]
                executor.run()
    finally:
        signal.signal(signal.SIGUSR1, usr1)
        setup_default_logger()
    assert result(out) == result(local)


def test_cluster_options_that_cannot_work(corpus, tmp_path, capsys):
    for args, message in (
        (["--dry_run"], "--dry_run writes Slurm job scripts: use it with --executor slurm, not local"),
        (["--executor", "slurm", "--slurm_partition", "cpu", "--cpus_per_task", "0"], "must be at least 1"),
        (["--ray_address", "auto"], "--ray_address is for --executor ray, not local"),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(["data", "clean", *corpus, "--out", str(tmp_path / "out"), *args])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_stage_with_unfinished_tasks_names_the_first_ones_log(tmp_path):
    # datatrove's Ray executor only logs a failed task (and its dependants wait for it forever)
    ex = RayPipelineExecutor([], tasks=3, logging_dir=str(tmp_path))
    for rank in (0, 2):
        ex.mark_rank_as_completed(rank)
    with pytest.raises(UserError, match=r"^1 of 3 stage-1 tasks did not finish on Ray \(local\) \(task 1: see "
                       + re.escape(str(tmp_path / "logs" / "task_00001.log"))):
        check_stage(ex, "stage-1", "Ray (local)")
    ex.mark_rank_as_completed(1)
    check_stage(ex, "stage-1", "Ray (local)")
