"""The callbacks on their own, driven by hand: what they log and when they stop a run."""

import math
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import tensorboard
import torch
from conftest import hparams_tab_columns, read_events
from lightning.pytorch.trainer.states import TrainerFn
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from dropout_lab import MLPClassifier, MNIST5kDataModule
from dropout_lab.callbacks import GeneralizationGap, add_hparams_summary, hparams_table
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


def test_hparams_tab_shows_model_rates_learn_dropout_and_schedule_without_ticking(tmp_path):
    model = MLPClassifier(dropout=0.3)
    model.hparams.update(learn_dropout=True, dropout_schedule="early")  # dropout settings that are not rates
    with SummaryWriter(tmp_path) as writer:
        add_hparams_summary(writer, hparams_table(model, MNIST5kDataModule()))
    events = read_events(tmp_path)
    assert hparams_tab_columns(events) == ["dropout", "dropout_schedule", "input_dropout", "learn_dropout", "model"]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert {"data", "lr", "seed_everything", "seed", "batch_size", "hidden"} <= set(session)  # one tick away
    assert session["data"].string_value == "MNIST5kDataModule" and session["dropout"].number_value == 0.3
    assert session["learn_dropout"].string_value == "true" and session["dropout_schedule"].string_value == "early"


def test_tensorboard_hparams_page_ticks_five_columns_marked_differs_first():
    """What hparams_tab_columns (conftest) assumes of TensorBoard's page; when this fails, check the tab itself
    with scripts/make_images.py and adapt HPARAMS_SHOWN in callbacks.py."""
    with zipfile.ZipFile(Path(tensorboard.__file__).parent / "webfiles.zip") as web:
        page = web.read("index.js").decode()
    sort_differs_first = re.search(r"(\w)\.sort\(\((\w),(\w)\)=>\2\.info\.differs===\3\.info\.differs", page)
    assert sort_differs_first, "the HParams page no longer sorts hyperparameters with differs first"
    assert f"Math.min(5,{sort_differs_first.group(1)}.length)" in page, "the HParams page no longer ticks five"
