"""Beyond one machine: two torchrun "nodes" on localhost, a torchrun restart, SLURM's sbatch and requeue.

Every launch runs in its own process group with a time limit; whatever is left of it is killed.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import QUICK, ROOT, only_run_dir, read_events, run_train, scalars
from test_gap import COMPARED, SAME_WEIGHTS
from test_tune import GRID, POINTS, TINY

from dropout_lab.checkpointing import safe_load
from dropout_lab.study_storage import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a SLURM cluster of its own: more than the 600 s of the rest

SMALL_SAME_WEIGHTS = [*SAME_WEIGHTS, "--model.hidden=[32]"]  # lr = 0: every run evaluates the same weights
PROBE = "--trainer.callbacks+=tests.ddp_probe.DropoutProbe"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(
    commands: dict[str, list[str]], logs: Path, timeout: float = 240, envs: dict[str, dict] | None = None
) -> dict[str, tuple[int, str]]:
    """Start every command at once, wait for all; ``{name: (exit code, output)}``. Kills all on a timeout.

    ``envs``: a command's environment by its name (default: ENV).
    """
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    try:
        for name, cmd in commands.items():
            with open(logs / f"{name}.log", "w") as out:
                procs[name] = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=(envs or {}).get(name, ENV),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + timeout
        for proc in procs.values():
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"not finished after {timeout} s: {tail(logs)}")
    finally:
        for proc in procs.values():  # torchrun's workers are in its process group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return {name: (proc.returncode, (logs / f"{name}.log").read_text()) for name, proc in procs.items()}


def tail(logs: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(logs.glob("*.log")))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """A one-process run on the same weights, read back from its event files."""
    root = tmp_path_factory.mktemp("one_process")
    run_train(*SMALL_SAME_WEIGHTS, root=root)
    return read_events(only_run_dir(root))


def assert_same_values_and_distinct_masks(run_dir: Path, one_process, probe_dir: Path) -> None:
    distributed = read_events(run_dir)
    for tag in COMPARED:
        (_, expected), (_, value) = scalars(one_process, tag)[-1], scalars(distributed, tag)[-1]
        assert value == pytest.approx(expected, abs=1e-5), tag
    rank0, rank1 = (torch.load(probe_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["mask"].any() and not torch.equal(rank0["mask"], rank1["mask"])


# --- torchrun ----------------------------------------------------------------------------------


def test_two_torchrun_nodes_log_what_one_process_logs_and_only_rank_0_writes(tmp_path, one_process):
    port = free_port()
    nodes = {}
    for node in (0, 1):
        nodes[f"node{node}"] = [
            *TORCHRUN,
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=two-nodes",
            "train.py",
            *SMALL_SAME_WEIGHTS,
            "--trainer.accelerator=cpu",
            "--trainer.num_nodes=2",
            "--trainer.devices=1",
            PROBE,
            f"--trainer.callbacks.out_dir={tmp_path / 'probe'}",
            # Each "node" its own folder, as on machines that share no disk: rank 1's stays empty.
            f"--trainer.default_root_dir={tmp_path / f'node{node}_root'}",
        ]
    results = run_together(nodes, tmp_path / "logs")
    assert all(code == 0 for code, _ in results.values()), tail(tmp_path / "logs")

    written = [root for root in tmp_path.glob("node*_root") if any(root.rglob("*"))]
    assert len(written) == 1, written  # one node wrote, the one with global rank 0
    run_dir = only_run_dir(written[0])
    assert len({path.name.split(".")[-2] for path in run_dir.glob("events.out.tfevents.*")}) == 1  # one pid
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert_same_values_and_distinct_masks(run_dir, one_process, tmp_path / "probe")


def test_torchrun_restarts_killed_workers_which_continue_the_run_to_its_last_epoch(tmp_path):
    epochs, batches = 3, 4
    job = [
        *TORCHRUN,
        "--standalone",  # a rendezvous on a free local port
        "--nproc-per-node=2",
        "--max-restarts=1",
        "train.py",
        *QUICK,
        "--model.hidden=[32]",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.limit_train_batches={batches}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--ckpt_path=auto",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        # Rank 1 dies in the middle of epoch 1, after epoch 0's last.ckpt.
        "--trainer.callbacks+=tests.crash_callbacks.KillRankOnFirstStart",
        "--trainer.callbacks.rank=1",
        f"--trainer.callbacks.step={batches + 2}",
    ]
    # torch's issue #135712: restarted workers that share torchrun's store read the killed workers'
    # addresses from it (gloo: "connectFullMesh failed ... Connection refused"); a store per start avoids it.
    env = {**ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    [(code, output)] = run_together({"torchrun": job}, tmp_path / "logs", envs={"torchrun": env}).values()
    assert code == 0, output[-5000:]
    assert "--ckpt_path=auto: no last.ckpt under" in output  # the first start
    assert "Resuming" in output and "last.ckpt" in output  # the restart
    assert "(exitcode: -9) local_rank: 1" in output  # torchrun saw the SIGKILL

    run_dir = only_run_dir(tmp_path / "runs")  # one run, continued in its own folder
    checkpoint = safe_load(run_dir / "checkpoints" / "last.ckpt")
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (epochs - 1, epochs * batches)
    events = read_events(run_dir)  # all of the run's event files, read as TensorBoard reads them
    assert [step for step, _ in scalars(events, "train/loss")] == list(range(epochs * batches))
    assert [step for step, _ in scalars(events, "val/acc")] == [(e + 1) * batches - 1 for e in range(epochs)]


# --- SLURM -------------------------------------------------------------------------------------


def no_local_slurm() -> str | None:
    """Why no local SLURM cluster can be started here, or None."""
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(tool) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts job steps as the submitting user)"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster started by scripts/slurm/local_cluster.sh; its environment for sbatch."""
    if reason := no_local_slurm():
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    script = str(ROOT / "scripts" / "slurm" / "local_cluster.sh")
    try:
        started = subprocess.run(
            [script, "start", folder, str(free_port()), str(free_port())], capture_output=True, text=True, timeout=60
        )
        if started.returncode != 0:
            pytest.skip(f"the local SLURM cluster did not start: {started.stderr.strip()[-500:]}")
        yield {**ENV, "SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{Path(sys.executable).parent}:{ENV['PATH']}"}
    finally:
        subprocess.run([script, "stop", folder], timeout=60)


def job_state(job_id: str, env: dict) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30)
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def test_sbatch_runs_two_tasks_and_a_requeued_job_continues_the_run(tmp_path, slurm_cluster, one_process):
    # Epoch 1 starts with the signal SLURM sends the batch script before the time limit: the script
    # requeues the job, which then continues from last.ckpt with the script's --ckpt_path=auto.
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--ntasks-per-node=2",
            f"--output={tmp_path / 'slurm-%j.out'}",
            "scripts/slurm/train.sbatch",
            *SMALL_SAME_WEIGHTS,
            "--trainer.max_epochs=3",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            PROBE,
            f"--trainer.callbacks.out_dir={tmp_path / 'probe'}",
            "--trainer.callbacks+=tests.crash_callbacks.SignalJobAtEpochStart",
        ],
        cwd=ROOT,
        env=slurm_cluster,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 300
    try:
        while (state := job_state(job_id, slurm_cluster))["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline, f"job {job_id} not finished after 300 s: {state['JobState']}"
            time.sleep(1)
    finally:
        subprocess.run(["scancel", job_id], env=slurm_cluster, timeout=30)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("COMPLETED", "0:0", "1"), output[-5000:]

    assert f"requeueing job {job_id}" in output and "Resuming" in output
    run_dir = only_run_dir(tmp_path / "runs")
    assert safe_load(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert_same_values_and_distinct_masks(run_dir, one_process, tmp_path / "probe")


def test_a_job_array_of_tune_workers_runs_every_grid_point_and_seed_once(tmp_path, slurm_cluster):
    journal = tmp_path / "shared" / "optuna.log"  # TUNE_STORAGE: the no-server storage of a shared filesystem
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0-1",
            f"--output={tmp_path / 'slurm-%A_%a.out'}",
            "scripts/slurm/tune.sbatch",
            *TINY,
            *GRID,
            "--tune.repeats=2",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            # Trial 0 trains only once trial 1's run exists: both tasks run trials, whichever starts first.
            "--trainer.callbacks+=tests.crash_callbacks.WaitForRun",
        ],
        cwd=ROOT,
        env={**slurm_cluster, "TUNE_STORAGE": str(journal)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 300
    try:
        while tasks := array_tasks(job_id, slurm_cluster):
            if all(task["JobState"] in ("COMPLETED", "FAILED", "CANCELLED") for task in tasks):
                break
            assert time.monotonic() < deadline, f"job array {job_id} not finished after 300 s: {tasks}"
            time.sleep(1)
    finally:
        subprocess.run(["scancel", job_id], env=slurm_cluster, timeout=30)
    outputs = [path.read_text() for path in sorted(tmp_path.glob(f"slurm-{job_id}_*.out"))]
    assert [(task["JobState"], task["ExitCode"]) for task in tasks] == [("COMPLETED", "0:0")] * 2, outputs

    study = optuna.load_study(study_name="tune", storage=open_storage(str(journal), 10))
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert sorted((t.params for t in completed), key=POINTS.index) == POINTS  # every point and seed, none twice
    assert len({trial.user_attrs["worker"] for trial in completed}) == 2  # one worker per array task
    assert all("Grid: 2 points × 2 seeds = 4 trials." in output for output in outputs)


def array_tasks(job_id: str, env: dict) -> list[dict[str, str]]:
    """Each task of a job array as scontrol shows it (one line each with -o)."""
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30
    )
    return [dict(field.split("=", 1) for field in line.split() if "=" in field) for line in shown.stdout.splitlines()]


@pytest.mark.skipif(no_local_slurm() is None, reason="SLURM runs here: the sbatch test above covers it")
def test_tasks_started_with_sruns_environment_log_what_one_process_logs(tmp_path, one_process):
    # What srun sets for 2 tasks on one node, which Lightning's SLURMEnvironment reads.
    job = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "dropout-lab",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "127.0.0.1",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NODEID": "0",
        "MASTER_PORT": str(free_port()),  # instead of Lightning's 15000 + the job id's last digits
    }
    envs = {f"task{r}": {**ENV, **job, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in (0, 1)}
    task = [
        sys.executable,
        "train.py",
        *SMALL_SAME_WEIGHTS,
        "--trainer.accelerator=cpu",
        "--trainer.num_nodes=1",
        "--trainer.devices=2",
        PROBE,
        f"--trainer.callbacks.out_dir={tmp_path / 'probe'}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    results = run_together({name: task for name in envs}, tmp_path / "logs", envs=envs)
    assert all(code == 0 for code, _ in results.values()), tail(tmp_path / "logs")
    assert "SLURM auto-requeueing enabled" in results["task0"][1]  # Lightning took the SLURM path
    run_dir = only_run_dir(tmp_path / "runs")
    assert len({path.name.split(".")[-2] for path in run_dir.glob("events.out.tfevents.*")}) == 1  # one pid
    assert_same_values_and_distinct_masks(run_dir, one_process, tmp_path / "probe")
