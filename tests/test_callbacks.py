"""The callbacks on their own, driven by hand: what they log and when they stop a run."""

import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from dropout_lab.callbacks import GeneralizationGap
from dropout_lab.nan_guard import NaNGuard


class LoggedValues:
    """Stands in for the LightningModule: keeps what ``log_dict`` was given."""

    def __init__(self) -> None:
        self.logged: dict = {}

    def log_dict(self, values: dict, **kwargs) -> None:
        self.logged.update(values)


def validation_end(gap: GeneralizationGap, val_acc: float, sanity_checking: bool = False) -> dict:
    metrics = {key: torch.tensor(0.5) for key in ("val/loss", "train_eval/loss", "train_eval/acc")}
    trainer = SimpleNamespace(
        sanity_checking=sanity_checking,
        callback_metrics={**metrics, "val/acc": torch.tensor(val_acc)},
        state=SimpleNamespace(fn=TrainerFn.FITTING),
    )
    module = LoggedValues()
    gap.on_validation_epoch_end(trainer, module)
    return module.logged


def test_best_val_acc_ignores_the_sanity_check():
    gap = GeneralizationGap()
    assert validation_end(gap, 0.99, sanity_checking=True) == {}
    assert validation_end(gap, 0.5)["hp/val_acc_best"] == 0.5


def test_best_val_acc_is_restored_on_resume():
    gap = GeneralizationGap()
    validation_end(gap, 0.9)
    resumed = GeneralizationGap()
    resumed.load_state_dict(gap.state_dict())
    assert validation_end(resumed, 0.5)["hp/val_acc_best"] == pytest.approx(0.9)


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_nan_guard_stops_at_a_nan_or_infinite_loss(loss):
    trainer = SimpleNamespace(current_epoch=0, global_step=1, checkpoint_callback=None)
    with pytest.raises(FloatingPointError, match=f"the training loss became {loss}"):
        NaNGuard().on_train_batch_end(trainer, None, torch.tensor(loss), None, 0)
    NaNGuard().on_train_batch_end(trainer, None, torch.tensor(2.3), None, 0)  # a finite loss goes on
