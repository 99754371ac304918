"""`jielong data clean` on a cluster: the same two stages (`jielong.prep.pipeline`) run by
datatrove's Ray or Slurm executor instead of local processes, and a Slurm dry run.

    cluster = ClusterConfig(ray_address="auto", cpus_per_task=2)
    run_on_ray(stage1, stage2, logs, tasks=64, workers=-1, cluster=cluster)
    run_on_slurm(stage1, stage2, logs, out, tasks=64, workers=-1,
                 cluster=ClusterConfig(slurm_partition="cpu", dry_run=True))

Ray: datatrove's RayPipelineExecutor expects `ray.init()` done; `ray_cluster` does it: no
address starts a private one-machine cluster (stopped at the end), "auto" joins the cluster
`ray start` runs on this machine, HOST:6379 the one whose head that is. Ray (2.60) cannot be
held to loopback: it turns 127.0.0.1 into the machine's address (`resolve_ip_for_localhost`)
and listens on every interface; what keeps a cluster private is its token authentication, on
by default, which a joining driver needs too (RAY_AUTH_MODE=token and the token). Every node
needs jielong installed and OUT on a shared filesystem (datatrove's completions, stats and
stage-1 shards live there). datatrove neither raises when a task fails (it logs and counts)
nor stops waiting for a failed dependency (it sleeps in 2-minute rounds), so the stages run
one after the other here and each is checked for unfinished tasks.

Slurm: datatrove's SlurmPipelineExecutor pickles each stage's executor next to its logs
(executor.pik), writes an sbatch script whose array tasks run `launch_pickled_pipeline` on
it, and submits it, and a `merge_stats` job after it, by calling `sbatch` in a subprocess.
The dry run puts a stand-in `sbatch` first on PATH that keeps each script and its arguments
instead of submitting (datatrove's code runs unchanged); the scripts land in OUT/slurm/ with
a submit.sh that submits them in order, each stage `afterok` the one before.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from datatrove.executor.ray import RayPipelineExecutor
from datatrove.executor.slurm import SlurmPipelineExecutor
from loguru import logger

from jielong.errors import UserError
from jielong.prep.config import ClusterConfig

# ------------------------------------------------------------------------------------ Ray


@contextmanager
def ray_cluster(address: str | None, num_cpus: int, verbose: bool = False):
    """Ray initialised for the run: joined at `address`, or a private local cluster with
    `num_cpus` CPUs; shut down after unless it was running before."""
    import ray  # lazy: ray is needed only here

    if ray.is_initialized():  # a caller (a notebook, a test) set it up: use theirs
        yield ray
        return
    quiet = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "WARNING"}
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except ConnectionError as e:
        raise UserError(f"--ray_address {address}: cannot join a Ray cluster there ({str(e).splitlines()[0]}); "
                        "start one with `ray start --head` (one with token authentication also needs "
                        "RAY_AUTH_MODE=token and its token here), or leave --ray_address out for a "
                        "private one on this machine") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_stage(ex, name: str, cluster: str) -> None:
    """A UserError naming the first failed task's log, when a stage left tasks unfinished."""
    left = ex.get_incomplete_ranks()
    if left:
        log = ex.logging_dir.resolve_paths(f"logs/task_{left[0]:05d}.log")
        raise UserError(f"{len(left)} of {ex.world_size} {name} tasks did not finish on {cluster} "
                        f"(task {left[0]}: see {log}); run the same command again to resume")


def run_on_ray(stage1: list, stage2: list, logs: Path, tasks: int, workers: int,
               cluster: ClusterConfig, verbose: bool = False) -> None:
    """Stage 1 in `tasks` Ray tasks (`workers` at once, -1: as many as the cluster holds),
    then stage 2 in one, each reserving `cluster.cpus_per_task` CPUs."""
    per_task = {"cpus_per_task": cluster.cpus_per_task, "mem_per_cpu_gb": cluster.mem_per_cpu_gb}
    num_cpus = (workers if workers > 0 else tasks) * cluster.cpus_per_task
    with ray_cluster(cluster.ray_address, num_cpus, verbose) as ray:
        have = ray.cluster_resources()
        gb = cluster.cpus_per_task * cluster.mem_per_cpu_gb
        if have.get("CPU", 0) < cluster.cpus_per_task or have.get("memory", 0) < gb * 2**30:
            # datatrove would wait forever for a placement group the cluster cannot hold
            raise UserError(f"the Ray cluster has {have.get('CPU', 0):g} CPUs and "
                            f"{have.get('memory', 0) / 2**30:.1f} GB for tasks, and each task asks for "
                            f"{cluster.cpus_per_task} CPUs and {gb} GB: lower --cpus_per_task or "
                            "--mem_per_cpu_gb, or add nodes")
        if cluster.ray_address is None:  # its warning that OUT must be shared is for real clusters
            logger.disable("datatrove")
        try:
            s1 = RayPipelineExecutor(stage1, tasks=tasks, workers=workers, logging_dir=str(logs / "stage1"),
                                     **per_task)
            s2 = RayPipelineExecutor(stage2, tasks=1, workers=1, logging_dir=str(logs / "stage2"), **per_task)
        finally:
            logger.enable("datatrove")
        where = f"Ray ({cluster.ray_address or 'local'})"
        s1.run()
        check_stage(s1, "stage-1", where)
        s2.run()
        check_stage(s2, "stage-2", where)


# ---------------------------------------------------------------------------------- Slurm


FAKE_SBATCH = """#!/bin/sh
# `jielong data clean --executor slurm --dry_run`: keep the job instead of submitting it
n=$(($(ls "$JIELONG_SBATCH_DIR" | grep -c '[.]args$') + 1))
for a in "$@"; do script="$a"; done
cp "$script" "$JIELONG_SBATCH_DIR/$n.sh"
for a in "$@"; do [ "$a" = "$script" ] || printf '%s\\n' "$a"; done > "$JIELONG_SBATCH_DIR/$n.args"
echo "Submitted batch job $n"
"""


@contextmanager
def stand_in_sbatch(folder: Path):
    """`sbatch` in this process's subprocesses keeps each job in `folder` (N.sh and N.args,
    its options) and answers job id N."""
    with tempfile.TemporaryDirectory() as bin_dir:
        exe = Path(bin_dir) / "sbatch"
        exe.write_text(FAKE_SBATCH)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
        saved = {k: os.environ.get(k) for k in ("PATH", "JIELONG_SBATCH_DIR")}
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{saved['PATH'] or ''}"
        os.environ["JIELONG_SBATCH_DIR"] = str(folder)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def write_submit_script(folder: Path) -> list[dict]:
    """Name the kept jobs after their job names, move the dependency datatrove wrote inside a
    script (on a made-up job id) to its sbatch command, and write folder/submit.sh, which
    submits them in order, each dependency on the real id of the job before."""
    jobs = []
    for n in range(1, len(list(folder.glob("*.args"))) + 1):
        lines = (folder / f"{n}.sh").read_text().splitlines()
        args = (folder / f"{n}.args").read_text().splitlines()
        args += [x.removeprefix("#SBATCH ") for x in lines if x.startswith("#SBATCH --dependency=")]
        lines = [x for x in lines if not x.startswith("#SBATCH --dependency=")]
        name = next(x.split("=", 1)[1] for x in lines if x.startswith("#SBATCH --job-name="))
        kind = "stats" if any(x.startswith("merge_stats ") for x in lines) else "tasks"
        script = folder / f"{n}-{name}-{kind}.sh"
        script.write_text("\n".join(lines) + "\n")
        (folder / f"{n}.sh").unlink()
        (folder / f"{n}.args").unlink()
        for i, a in enumerate(args):  # "afterok:2" -> "afterok:$job2", filled in by submit.sh
            if a.startswith("--dependency="):
                deps = [d.split(":") for d in a.split("=", 1)[1].split(",")]
                args[i] = "--dependency=" + ",".join(f"{k}:$job{j}" for k, j in deps)
        jobs.append({"id": n, "name": name, "kind": kind, "script": str(script), "args": args})
    cmds = [f"job{j['id']}=$(sbatch --parsable {' '.join(j['args'])} {shlex.quote(j['script'])})"
            for j in jobs]
    (folder / "submit.sh").write_text(
        "#!/bin/sh\n# written by `jielong data clean --executor slurm --dry_run`: submits the jobs, "
        "each after the one it needs\nset -e\n" + "\n".join(cmds)
        + '\necho "submitted ' + " ".join(f"$job{j['id']}" for j in jobs) + '"\n')
    (folder / "jobs.json").write_text(json.dumps(jobs, indent=1))
    return jobs


def run_on_slurm(stage1: list, stage2: list, logs: Path, out: Path, tasks: int, workers: int,
                 cluster: ClusterConfig) -> list[dict] | None:
    """Submit stage 1 as a job array of `tasks` (`workers` at once, -1: no limit) and stage 2
    after it; with `cluster.dry_run`, write the jobs to OUT/slurm/ instead and return them."""
    venv = os.environ.get("VIRTUAL_ENV")  # the jobs run in the environment of this command
    env = f"source {venv}/bin/activate" if venv else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"
    common = {"time": cluster.slurm_time, "partition": cluster.slurm_partition, "env_command": env,
              "cpus_per_task": cluster.cpus_per_task, "mem_per_cpu_gb": cluster.mem_per_cpu_gb}
    s1 = SlurmPipelineExecutor(stage1, tasks=tasks, workers=workers, job_name="jielong-clean",
                               logging_dir=str(logs / "stage1"), **common)
    s2 = SlurmPipelineExecutor(stage2, tasks=1, job_name="jielong-finish", depends=s1,
                               logging_dir=str(logs / "stage2"), **common)
    if not cluster.dry_run:
        s2.run()
        print(f"submitted to Slurm ({tasks} tasks, then one to de-duplicate and write); when they "
              f"finish: jielong data stats {out}")
        return None
    folder = out / "slurm"
    if folder.exists():
        for p in folder.iterdir():
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    with stand_in_sbatch(folder):
        s2.run()
    jobs = write_submit_script(folder)
    print(f"dry run: {len(jobs)} Slurm jobs written, none submitted ({tasks} stage-1 tasks, then one "
          f"to de-duplicate and write, each followed by datatrove's merge_stats):")
    for j in jobs:
        print("  sbatch " + " ".join([*j["args"], j["script"]]))
    print(f"submit them all, each after the one it needs: sh {folder / 'submit.sh'}; when they finish: "
          f"jielong data stats {out}")
    return jobs
