"""`jielong launch`: run any jielong command on several nodes, through Slurm or by hand.

Run as:
    jielong launch slurm --nodes 2 --gpus_per_node 8 --partition gpu --time 12:00:00 --out runs/slurm/pretrain.sbatch -- pretrain data.jsonl --preset 124m --out runs/124m
    jielong launch torchrun --nodes 2 --gpus_per_node 8 --master 10.0.0.1 -- pretrain data.jsonl --preset 124m

`launch slurm` writes a commented sbatch script and prints how to submit it (`--submit`
submits it with `sbatch` at once). The script follows PyTorch's torchrun documentation
("Launching a multi-node job"): Slurm starts one task per node (`srun`), each task one
torchrun that starts one process per GPU, and the torchruns meet at a c10d rendezvous hosted
on the allocation's first node (`scontrol show hostnames`), named by the job id, so every
node runs the same line and no rank is written by hand. The jielong command (everything
after `--`) is quoted word by word (shlex), so spaces, quotes and `$` in it reach jielong
unchanged. It is not checked here: `jielong COMMAND --help` shows its options.

`launch torchrun` prints the torchrun command to type on each node when there is no
scheduler: a static rendezvous at --master (node 0's address), each node with its own
--node_rank.
"""

from __future__ import annotations

import datetime
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from jielong.errors import UserError
from jielong.files import write_text

# Slurm's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (sbatch(1)).
SLURM_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,+-]+$")  # partitions, accounts, job names: no shell words


def jielong_words(cmd: list[str]) -> list[str]:
    """The jielong command's words, without a leading `jielong`; never empty."""
    words = cmd[1:] if cmd and cmd[0] == "jielong" else list(cmd)
    if not words:
        raise UserError("launch: give the jielong command to run after `--`, e.g. "
                        "`jielong launch slurm --nodes 2 -- pretrain data.jsonl --preset 124m`")
    return words


def check_counts(nodes: int, gpus_per_node: int, port: int) -> None:
    if nodes < 1:
        raise UserError(f"launch: --nodes {nodes} must be 1 or more")
    if gpus_per_node < 1:
        raise UserError(f"launch: --gpus_per_node {gpus_per_node} must be 1 or more (one process a GPU)")
    if not 1024 <= port <= 65535:
        raise UserError(f"launch: --port {port} must be between 1024 and 65535")


def torchrun_line(nodes: int, gpus_per_node: int, rendezvous: list[str], words: list[str]) -> str:
    return " ".join(["torchrun", f"--nnodes {nodes}", f"--nproc_per_node {gpus_per_node}", *rendezvous,
                     "-m jielong.cli", shlex.join(words)])


def sbatch_script(words: list[str], nodes: int, gpus_per_node: int, partition: str | None,
                  time: str, account: str | None, job_name: str, cpus_per_task: int | None,
                  port: int, log: str) -> str:
    """The sbatch script's text for the jielong command `words`."""
    sbatch = [f"--job-name={job_name}", f"--nodes={nodes}", "--ntasks-per-node=1",
              f"--gpus-per-node={gpus_per_node}"]
    sbatch += [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    sbatch += [f"--partition={partition}"] if partition else []
    sbatch += [f"--account={account}"] if account else []
    sbatch += [f"--time={time}", f"--output={log}"]
    shown = shlex.join(words).replace("\r", "\\r").replace("\n", "\\n")  # a comment stays one line
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return "\n".join([
        "#!/bin/bash",
        f"# Written by `jielong launch slurm` on {when}: `jielong {shown}`",
        f"# on {nodes} node(s) x {gpus_per_node} GPU(s). Submit it with: sbatch THIS_FILE",
        "# One task per node (srun), each a torchrun that starts one process per GPU; the",
        "# log is --output's file (%x: the job's name, %j: its id). Relative paths, here and in",
        "# the command, are from the folder sbatch is called in (the job's working directory).",
        *[f"#SBATCH {s}" for s in sbatch],
        "",
        "set -euo pipefail",
        "# The job runs in the environment sbatch was called from (Slurm's --export=ALL), so",
        "# torchrun and jielong are the ones on your PATH then; or activate one here:",
        "# source .venv/bin/activate",
        "",
        f"# The first node of the allocation hosts the rendezvous: a c10d store on port {port}.",
        "# (awk reads every name: `head -n 1` would close the pipe early, and scontrol's",
        "# SIGPIPE would then end the job under pipefail)",
        "head_node=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | awk 'NR == 1')",
        "# torchrun's own default: one thread a process, no oversubscribed cores",
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}",
        "",
        "# NCCL hints: uncomment what your cluster needs (its documentation says which).",
        "# export NCCL_DEBUG=INFO                  # log which transport NCCL picks (InfiniBand, sockets)",
        "# export NCCL_SOCKET_IFNAME=ib0           # the network interface for NCCL's bootstrap (see `ip addr`)",
        "# export NCCL_IB_HCA=mlx5                 # which InfiniBand adapters to use",
        "# export NCCL_IB_DISABLE=1                # no InfiniBand: TCP sockets only (slow across nodes)",
        "# export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # a rank that fails ends the job instead of a hang",
        "",
        f"echo \"rendezvous on $head_node:{port}, job $SLURM_JOB_ID, nodes: $SLURM_JOB_NODELIST\"",
        "# srun starts one task on each node; --kill-on-bad-exit ends them all when one fails.",
        "srun --kill-on-bad-exit=1 torchrun \\",
        f"    --nnodes {nodes} --nproc_per_node {gpus_per_node} \\",
        f"    --rdzv_id \"$SLURM_JOB_ID\" --rdzv_backend c10d --rdzv_endpoint \"$head_node:{port}\" \\",
        f"    -m jielong.cli {shlex.join(words)}",
        "",
    ])


def slurm(cmd: list[str], nodes: int = 1, gpus_per_node: int = 8, partition: str | None = None,
          time: str = "24:00:00", account: str | None = None, job_name: str = "jielong",
          cpus_per_task: int | None = None, port: int = 29500,
          out: str = "runs/slurm/job.sbatch", submit: bool = False) -> dict:
    """Write an sbatch script that runs a jielong command on Slurm nodes under torchrun.

    Args:
        cmd: the jielong command to run, after `--` (e.g. `-- pretrain data.jsonl --preset 124m`).
        nodes: nodes to allocate; one torchrun runs on each.
        gpus_per_node: GPUs per node; one training process each.
        partition: the Slurm partition (default: the cluster's).
        time: the job's time limit (HH:MM:SS, D-HH:MM:SS or minutes).
        account: the Slurm account to charge (default: yours).
        job_name: the job's name in squeue and in its log's file name.
        cpus_per_task: CPU cores for each node's task (default: the cluster's).
        port: the rendezvous port on the first node.
        out: where the script is written; its log goes beside it.
        submit: submit it with sbatch now.
    """
    words = jielong_words(cmd)
    check_counts(nodes, gpus_per_node, port)
    if not SLURM_TIME.match(time):
        raise UserError(f"launch slurm: --time {time!r} is not a Slurm time; write HH:MM:SS "
                        "(e.g. 12:00:00), D-HH:MM:SS or minutes")
    for flag, value in (("partition", partition), ("account", account), ("job_name", job_name)):
        if value is not None and not SLURM_NAME.match(value):
            raise UserError(f"launch slurm: --{flag} {value!r} may hold only letters, digits and . _ , + -")
    if cpus_per_task is not None and cpus_per_task < 1:
        raise UserError(f"launch slurm: --cpus_per_task {cpus_per_task} must be 1 or more")
    path = Path(out)
    if path.is_dir():
        raise UserError(f"launch slurm: --out {path} is a folder; name the script file, e.g. {path / 'job.sbatch'}")
    log = str(path.parent / "%x-%j.out")
    if re.search(r"\s", log):  # #SBATCH lines are split at white space
        raise UserError(f"launch slurm: --out {path}: sbatch cannot take a log folder with spaces; "
                        "choose a path without them")
    text = sbatch_script(words, nodes, gpus_per_node, partition, time, account, job_name,
                         cpus_per_task, port, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)
    path.chmod(0o755)
    result = {"script": str(path), "nodes": nodes, "gpus_per_node": gpus_per_node}
    if not submit:
        print(f"wrote {path} ({nodes} node(s) x {gpus_per_node} GPU(s)); submit it with:\n"
              f"  sbatch {shlex.quote(str(path))}")
        return result
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(f"launch slurm --submit: sbatch is not on this machine's PATH; {path} is "
                        "written: copy it to the cluster's login node and run `sbatch` there")
    print(f"wrote {path}; submitting it: sbatch {shlex.quote(str(path))}")
    done = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"launch slurm --submit: sbatch refused {path}: "
                        f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or ['no message']}")
    print(done.stdout.strip())  # "Submitted batch job 12345"
    return {**result, "sbatch": done.stdout.strip()}


def torchrun(cmd: list[str], nodes: int = 2, gpus_per_node: int = 8, master: str | None = None,
             node_rank: int | None = None, port: int = 29500) -> list[str]:
    """Print the torchrun command to type on each node of a multi-node run without a scheduler.

    Args:
        cmd: the jielong command to run, after `--`.
        nodes: how many nodes take part.
        gpus_per_node: GPUs per node; one training process each.
        master: node 0's address (a hostname or IP the other nodes reach).
        node_rank: print only this node's command (0 … nodes-1); default: every node's.
        port: the port node 0 listens on for the others.
    """
    words = jielong_words(cmd)
    check_counts(nodes, gpus_per_node, port)
    if not master or not re.match(r"^[A-Za-z0-9_.:\[\]-]+$", master):
        raise UserError(f"launch torchrun: --master {master!r}: give node 0's hostname or IP address, "
                        "e.g. --master 10.0.0.1")
    ranks = range(nodes) if node_rank is None else [node_rank]
    if node_rank is not None and not 0 <= node_rank < nodes:
        raise UserError(f"launch torchrun: --node_rank {node_rank} must be between 0 and {nodes - 1}")
    lines = [torchrun_line(nodes, gpus_per_node, [f"--node_rank {r}", f"--master_addr {master}",
                                                  f"--master_port {port}"], words) for r in ranks]
    for r, line in zip(ranks, lines, strict=True):
        print(f"# on node {r}:\n{line}" if node_rank is None else line)
    return lines
