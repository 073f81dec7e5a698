"""The Trainer flags users reach for run to the end with this template's callbacks, and keep the gap."""

import csv
import math
from pathlib import Path

import pytest
from conftest import QUICK, read_events, run_train, scalars

pytestmark = pytest.mark.slow

SMALL = [*QUICK, "--model.hidden=[32]"]

# flags -> where the gap is logged: "tensorboard", "csv", or None (the flags leave no logger)
FLAGS = {
    "no_logger": (["--trainer.logger=false"], None),
    "no_checkpointing": (["--trainer.enable_checkpointing=false"], "tensorboard"),
    "csv_logger": (["--trainer.logger=CSVLogger"], "csv"),
    "fast_dev_run": (["--trainer.fast_dev_run=true"], None),
    "val_twice_an_epoch": (["--trainer.val_check_interval=0.5"], "tensorboard"),
    "ddp_spawn": (["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"], "tensorboard"),
    "bf16": (["--trainer.precision=bf16-mixed"], "tensorboard"),
    "max_steps": (["--trainer.max_epochs=-1", "--trainer.max_steps=6"], "tensorboard"),
}


def csv_column(path: Path, column: str) -> list[float]:
    with open(path) as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


@pytest.mark.parametrize("case", FLAGS)
def test_trainer_flag_runs_to_the_end_and_keeps_the_gap(tmp_path, case):
    flags, gap_in = FLAGS[case]
    result = run_train(*SMALL, *flags, root=tmp_path)  # fails the test unless it exits 0
    output = result.stdout + result.stderr
    assert "test/acc" in result.stdout  # the test ran and printed its table...
    assert "hp/test_acc" not in result.stdout  # ...without the HParams copy of test/acc
    # Lightning's advertisement and its internal deprecation warning are not about the run.
    assert "litlogger" not in output and "LeafSpec" not in output
    runs = list(tmp_path.glob("lightning_logs/version_*"))

    if gap_in == "tensorboard":
        events = read_events(runs[0])
        gaps, losses = scalars(events, "gap/loss"), scalars(events, "train/loss")
        assert gaps and losses and all(math.isfinite(value) for _, value in gaps + losses)
        assert scalars(events, "hp/test_acc")
    elif gap_in == "csv":
        metrics = runs[0] / "metrics.csv"
        assert len(csv_column(metrics, "gap/loss")) == 2 and len(csv_column(metrics, "gap/acc")) == 2
        assert csv_column(metrics, "hp/test_acc") == csv_column(metrics, "test/acc")
        assert not list(runs[0].glob("events.out.tfevents.*"))
    else:
        assert runs == []

    if case == "no_checkpointing":
        assert "Testing the final weights: checkpointing is off" in result.stdout
        assert not list(tmp_path.rglob("*.ckpt"))
    if case == "val_twice_an_epoch":
        assert len(scalars(read_events(runs[0]), "gap/loss")) == 2 * 2
    if case == "max_steps":
        assert scalars(read_events(runs[0]), "train/loss")[-1][0] == 5  # steps 0..5
