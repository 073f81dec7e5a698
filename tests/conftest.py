"""Shared test helpers: run train.py as a user would, read TensorBoard event files back."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]

# One CPU thread in every test process and every train.py it starts. The bits of a matrix product depend on
# how many threads split its sums, and on a loaded machine (CI: two test workers on two cores) the math
# library was seen to use fewer threads than asked in one run of a pair: an exact-resume test then failed
# (1 of 523 tests, CI of 2026-12-07). One thread also keeps two workers from oversubscribing two cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
os.environ.update(ONE_THREAD)
torch.set_num_threads(1)

# Small and quick: a few batches of the embedded digits, no progress bar.
QUICK = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def run_train(*args: str, root: Path | None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python train.py ARGS --trainer.default_root_dir=ROOT`` in a subprocess and return it."""
    env = {**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    if root is not None:
        cmd.append(f"--trainer.default_root_dir={root}")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def only_run_dir(root: Path) -> Path:
    """The one run folder (``lightning_logs/version_N``) that train.py wrote under ``root``."""
    (run_dir,) = (root / "lightning_logs").iterdir()
    return run_dir


def read_events(run_dir: Path) -> EventAccumulator:
    """Load every event file of one TensorBoard run folder (scalars, tensors and plugin data)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every point logged under ``tag``."""
    return [(e.step, e.value) for e in events.Scalars(tag)]


def hparams_tab_columns(events: EventAccumulator) -> list[str]:
    """The hyperparameter columns TensorBoard's HParams tab ticks for this run, as its backend and page pick them.

    TensorBoard 2.21 orders the experiment's HParamInfos by (not differs, name) and ticks the first five;
    tests/test_callbacks.py checks that its page still does so.
    """
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    infos = plugin_data_pb2.HParamsPluginData.FromString(content).experiment.hparam_infos
    return [info.name for info in sorted(infos, key=lambda info: (not info.differs, info.name))[:5]]
