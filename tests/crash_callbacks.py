"""Callbacks that break a train.py run on purpose, for tests/test_reliability.py, or hold it (test_tune.py).

train.py loads them with ``--trainer.callbacks+=crash_callbacks.<Name>`` when tests/ is on PYTHONPATH.
"""

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning as L


def kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler: as a power cut or the OOM killer


class KillAtEpochStart(L.Callback):
    """SIGKILL the run when epoch ``epoch`` (0-based) starts: right after the previous epoch's checkpoint."""

    def __init__(self, epoch: int = 2) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            kill_this_process()


class KillWhenPickled:
    def __reduce__(self):
        kill_this_process()


class KillWhileSaving(L.Callback):
    """SIGKILL the run in the middle of writing the checkpoint of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.current_epoch == self.epoch:
            checkpoint["bomb"] = KillWhenPickled()  # torch.save dies while pickling the checkpoint


class PoisonWeightsAtEpochStart(L.Callback):
    """Set one weight to NaN when epoch ``epoch`` (0-based) starts, so its first loss is NaN."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            next(pl_module.parameters()).data.view(-1)[0] = math.nan


class KillRankOnFirstStart(L.Callback):
    """SIGKILL global rank ``rank`` before global step ``step``, only in a torchrun job's first start.

    torchrun numbers its starts in TORCHELASTIC_RESTART_COUNT; the restarted workers run on.
    """

    def __init__(self, rank: int = 1, step: int = 6) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        first_start = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
        if first_start and trainer.global_rank == self.rank and trainer.global_step == self.step:
            kill_this_process()


class SignalJobAtEpochStart(L.Callback):
    """Have SLURM send the batch script SIGUSR1 (as before the time limit) when epoch ``epoch`` starts.

    Only in the job's first start: SLURM sets SLURM_RESTART_COUNT in a requeued job.
    """

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        first_start = "SLURM_RESTART_COUNT" not in os.environ
        if first_start and trainer.is_global_zero and trainer.current_epoch == self.epoch:
            subprocess.run(["scancel", "--batch", "--signal=USR1", os.environ["SLURM_JOB_ID"]], check=True)


class KillInRun(L.Callback):
    """SIGKILL the process when its run number ``run`` (0-based; a tune.py trial is a run) starts training."""

    started = 0  # runs of this process that started training: every trial builds its own callbacks

    def __init__(self, run: int = 1) -> None:
        self.run = run

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if KillInRun.started == self.run:
            kill_this_process()
        KillInRun.started += 1


class WaitForAnotherWorker(L.Callback):
    """Hold a tune.py trial before its training until the study holds a trial of another worker (at most
    ``timeout`` seconds): two workers started together then both run trials, however late the second starts."""

    def __init__(self, storage: str, study_name: str = "tune", timeout: float = 120) -> None:
        self.storage, self.study_name, self.timeout = storage, study_name, timeout

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import optuna

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            trials = optuna.load_study(study_name=self.study_name, storage=self.storage).get_trials(deepcopy=False)
            if len({trial.user_attrs["worker"] for trial in trials if "worker" in trial.user_attrs}) > 1:
                return
            time.sleep(0.2)
        raise RuntimeError(f"no second worker joined the study in {self.timeout} s")


class KillAtStep(L.Callback):
    """SIGKILL the run when training batch ``step`` (the global step, 0-based) starts."""

    def __init__(self, step: int = 6) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            kill_this_process()


class WaitForRun(L.Callback):
    """Hold the run logged as ``version_<version>`` (a tune.py trial) at its start until the run ``version_<other>``
    of the same experiment exists: another worker has started that trial. Two workers then both run trials,
    whichever of them starts first or runs faster."""

    def __init__(self, version: int = 0, other: int = 1, timeout: float = 120) -> None:
        self.version, self.other, self.timeout = version, other, timeout

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger is None or trainer.logger.version != self.version:
            return
        other = Path(trainer.logger.root_dir) / f"version_{self.other}"
        deadline = time.monotonic() + self.timeout
        while not other.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no other worker started {other} within {self.timeout} s")
            time.sleep(0.1)
