"""The cosine schedule follows the run's length: a resume with more epochs re-plans it, one with the same is exact."""

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dropout_lab import MLPClassifier, MNIST5kDataModule
from dropout_lab.checkpointing import RNGState
from dropout_lab.lr_schedule import cosine

STEPS_PER_EPOCH = 3


class RecordLearningRate(L.Callback):
    """The learning rate each training step runs with, by global step."""

    def __init__(self) -> None:
        self.lr: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lr[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


class StopAfterEpoch(L.Callback):
    """Stop a run early, as a kill after an epoch's checkpoint would, without changing its plan."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def fit(root: Path, max_epochs: int, resume: bool = False, stop_after: int | None = None) -> tuple[L.Trainer, dict]:
    L.seed_everything(0)
    model = MLPClassifier(hidden=[16])
    record = RecordLearningRate()
    callbacks = [record, RNGState(), ModelCheckpoint(root, filename="last", monitor=None)]
    if stop_after is not None:
        callbacks.append(StopAfterEpoch(stop_after))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=STEPS_PER_EPOCH,
        limit_val_batches=0,
        log_every_n_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=root,
    )
    trainer.fit(model, MNIST5kDataModule(), ckpt_path=root / "last.ckpt" if resume else None)
    return trainer, record.lr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[L.Trainer, dict]:
    return fit(tmp_path_factory.mktemp("uninterrupted"), max_epochs=4)


def test_resume_with_more_epochs_follows_the_longer_runs_schedule(tmp_path, uninterrupted, caplog):
    fit(tmp_path, max_epochs=2)
    with caplog.at_level(logging.INFO):
        _, extended = fit(tmp_path, max_epochs=4, resume=True)
    _, expected = uninterrupted

    resumed_steps = range(2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH)
    assert sorted(extended) == list(resumed_steps)
    assert [extended[step] for step in resumed_steps] == [expected[step] for step in resumed_steps]
    # Halfway through the longer run: half the peak (the 2-epoch plan had reached 0 here).
    assert extended[6] == pytest.approx(0.5e-3)
    assert "re-planned for 12 steps" in caplog.text and "planned 6" in caplog.text


def test_resume_with_the_same_epochs_is_bit_identical(tmp_path, uninterrupted, caplog):
    fit(tmp_path, max_epochs=4, stop_after=1)
    with caplog.at_level(logging.INFO):
        trainer, resumed = fit(tmp_path, max_epochs=4, resume=True)
    expected_trainer, expected = uninterrupted

    assert all(resumed[step] == expected[step] for step in resumed) and len(resumed) == 2 * STEPS_PER_EPOCH
    weights, expected_weights = trainer.lightning_module.state_dict(), expected_trainer.lightning_module.state_dict()
    assert all(torch.equal(weights[key], expected_weights[key]) for key in expected_weights)
    assert "re-planned" not in caplog.text


def test_cosine_runs_from_one_to_zero_and_stays_there():
    assert [cosine(step, 4) for step in range(6)] == pytest.approx([1, 0.8535534, 0.5, 0.1464466, 0, 0])


def test_progress_bar_shows_the_training_loss_and_accuracy(uninterrupted):
    trainer, _ = uninterrupted
    assert {"train/loss", "train/acc"} <= set(trainer.progress_bar_metrics)
