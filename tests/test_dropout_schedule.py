"""Rates that change while training: scheduled (early, late) by the trainer's position, or learned; resumed exactly."""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import run_train
from lightning.pytorch.callbacks import ModelCheckpoint
from test_lr_schedule import StopAfterEpoch

from dropout_lab import CustomDropout, MLPClassifier, MNIST5kDataModule
from dropout_lab.checkpointing import RNGState
from dropout_lab.dropout import dropout_rates
from dropout_lab.dropout_schedule import DropoutSchedule, scheduled_p

STEPS_PER_EPOCH = 3


def test_early_is_the_rate_until_the_cutoff_then_zero():
    rates = [scheduled_p(0.5, "early", 2, "constant", epoch) for epoch in (0, 1.9, 2, 3.5)]
    assert rates == [0.5, 0.5, 0.0, 0.0]


def test_early_linear_goes_down_to_zero_at_the_cutoff():
    rates = [scheduled_p(0.5, "early", 2, "linear", epoch) for epoch in (0, 0.5, 1, 1.5, 2, 3)]
    assert rates == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0, 0.0])


def test_late_is_zero_until_the_cutoff_then_the_rate():
    assert [scheduled_p(0.3, "late", 1, "constant", epoch) for epoch in (0, 0.99, 1, 2)] == [0.0, 0.0, 0.3, 0.3]


def test_constant_is_the_rate_throughout():
    assert {scheduled_p(0.3, "constant", None, "constant", epoch) for epoch in (0, 1, 10)} == {0.3}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dropout_schedule": "early"},
            r"needs dropout_cutoff_epoch, the epoch \(an integer >= 1\) at which dropout switches off",
        ),
        ({"dropout_schedule": "late", "dropout_cutoff_epoch": -1}, r"switches on; got -1"),
        ({"dropout_schedule": "early", "dropout_cutoff_epoch": 0}, r"switches off; got 0"),
        (
            {"dropout_schedule": "late", "dropout_cutoff_epoch": 1, "dropout_ramp": "linear"},
            r"late dropout switches on at once",
        ),
        ({"dropout_cutoff_epoch": 3}, r"set dropout_schedule=early or late, or leave them out"),
        ({"dropout_ramp": "linear"}, r"set dropout_schedule=early or late, or leave them out"),
        ({"dropout_schedule": "middle"}, r"dropout_schedule must be constant, early or late, got 'middle'"),
    ],
)
def test_bad_schedules_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        MLPClassifier(**kwargs)
    assert "\n" not in str(error.value)


def test_a_cutoff_beyond_the_run_is_refused_at_setup_from_python():
    model = MLPClassifier(hidden=[8], dropout_schedule="early", dropout_cutoff_epoch=3)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="dropout_cutoff_epoch=3 is not before max_epochs=2"):
        trainer.fit(model, MNIST5kDataModule())


class PlainModule(L.LightningModule):
    """Any LightningModule with a CustomDropout, not a Classifier: the schedule is a Callback it can take."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), CustomDropout(0.4), torch.nn.Linear(784, 10))

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_schedule_callback_sets_the_rates_of_any_lightning_module():
    record = RecordRates()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=STEPS_PER_EPOCH,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DropoutSchedule("late", 1), record],
    )
    model = PlainModule()
    trainer.fit(model, MNIST5kDataModule())
    assert [rates for _, rates in sorted(record.rates.items())] == [[0.0]] * 3 + [[0.4]] * 3
    assert list(dropout_rates(model.net).values()) == [0.4]  # the set rate again after training


@pytest.mark.slow
def test_a_cutoff_beyond_the_run_stops_train_py_before_any_folder(tmp_path):
    args = ["--model.dropout_schedule=late", "--model.dropout_cutoff_epoch=4", "--trainer.max_epochs=4"]
    result = run_train(*args, root=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: dropout_cutoff_epoch=4 is not before max_epochs=4: the late schedule would never switch. "
        "Use a cutoff from 1 to 3, or more epochs."
    )
    assert not any(tmp_path.iterdir())


# --- Each step's rate, and exact resume ----------------------------------------------------------


class RecordRates(L.Callback):
    """The rate of every dropout layer during each training step, by global step."""

    def __init__(self) -> None:
        self.rates: dict[int, list[float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rates[trainer.global_step - 1] = list(dropout_rates(pl_module.net).values())  # the step just done


CHANGING_RATES = {
    "early_linear": {"dropout_schedule": "early", "dropout_cutoff_epoch": 3, "dropout_ramp": "linear"},
    "late": {"dropout_schedule": "late", "dropout_cutoff_epoch": 1},
    "learned": {"learn_dropout": True},
}


def fit(root: Path, kwargs: dict, resume: bool = False, stop_after: int | None = None) -> tuple[L.Trainer, dict]:
    L.seed_everything(0, verbose=False)
    model = MLPClassifier(hidden=[16], **kwargs)
    record = RecordRates()
    callbacks = [record, RNGState(), ModelCheckpoint(root, filename="last", monitor=None)]
    if stop_after is not None:
        callbacks.append(StopAfterEpoch(stop_after))
    trainer = L.Trainer(
        max_epochs=4,
        limit_train_batches=STEPS_PER_EPOCH,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=root,
    )
    trainer.fit(model, MNIST5kDataModule(), ckpt_path=root / "last.ckpt" if resume else None)
    return trainer, record.rates


@pytest.fixture(scope="module", params=list(CHANGING_RATES))
def uninterrupted(request, tmp_path_factory) -> tuple[str, L.Trainer, dict]:
    return request.param, *fit(tmp_path_factory.mktemp(request.param), CHANGING_RATES[request.param])


@pytest.mark.slow
def test_rates_change_by_step_as_scheduled_and_resume_bit_identically(tmp_path, uninterrupted):
    name, expected_trainer, expected_rates = uninterrupted
    if name == "early_linear":  # 0.2 and 0.5 down to 0 at the end of epoch 3 (step 9), by a ninth each step
        assert [rates[1] for _, rates in sorted(expected_rates.items())] == pytest.approx(
            [0.5 * (1 - step / 9) for step in range(9)] + [0.0] * 3
        )
    elif name == "late":  # 0 in epoch 0, then the rates
        assert [rates for _, rates in sorted(expected_rates.items())] == [[0.0, 0.0]] * 3 + [[0.2, 0.5]] * 9
    else:  # learned: every step moves them
        assert len({tuple(rates) for rates in expected_rates.values()}) == 4 * STEPS_PER_EPOCH

    fit(tmp_path, CHANGING_RATES[name], stop_after=1)  # two epochs of four, then stopped
    trainer, resumed_rates = fit(tmp_path, CHANGING_RATES[name], resume=True)

    assert sorted(resumed_rates) == list(range(2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH))
    assert all(resumed_rates[step] == expected_rates[step] for step in resumed_rates)
    weights, expected = trainer.lightning_module.state_dict(), expected_trainer.lightning_module.state_dict()
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], expected[key]) for key in expected)
    # After training, the set rates are back for test and predict (MC dropout), as in a loaded checkpoint.
    if name != "learned":
        assert list(dropout_rates(trainer.lightning_module.net).values()) == [0.2, 0.5]
