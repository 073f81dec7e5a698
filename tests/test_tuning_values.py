"""What tune.py reports: a search space's bounds, and a trial's value as its best epoch in the metric's direction."""

import lightning as L
import optuna
import pytest
import torch
from conftest import read_events, scalars

from dropout_lab import tuning
from dropout_lab.tuning import SpaceError, TuneCLI, parse_entry, parse_space, tune

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


@pytest.mark.parametrize(
    "entry",
    [
        "model.dropout=float:0.5:0.5",  # an empty range
        "model.lr=log:1e-3:1e-3",
        "data.batch_size=int:64:64",
        "model.dropout=float:0.1:0.5:0.9",  # three values: not a range
        "model.lr=log:1e-4:1e-3:1e-2",
    ],
)
def test_a_range_needs_exactly_two_bounds_low_below_high(entry):
    with pytest.raises(SpaceError):
        parse_entry(entry)


class ForgetBeforeSecondValidation(L.Callback):
    """Zero every weight before the second validation: epoch 2 is worse than epoch 1 in every metric
    (all logits 0: val/loss = log 10, val/acc = the share of class 0)."""

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.current_epoch == 1:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.zero_()


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["val/acc", "val/loss"])
def test_a_trial_reports_its_best_epoch_in_the_direction_of_the_metric(tmp_path, metric):
    flags = [
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.hidden=[64]",
        "--model.lr=0.01",
        "--trainer.callbacks+=test_tuning_values.ForgetBeforeSecondValidation",
        "--tune.params=[model.dropout=float:0.0:0.8]",
    ]
    tune(
        TuneCLI(
            [
                *flags,
                "--tune.n_trials=1",
                "--tune.pruner=none",
                f"--tune.metric={metric}",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    )

    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    (trial,) = study.trials
    values = [value for _, value in scalars(read_events(trial.user_attrs["run"]), metric)]
    first, last = values  # one value per epoch; the second is the worse
    best = max(values) if metric == "val/acc" else min(values)
    assert best == first != pytest.approx(last, abs=1e-3)
    assert trial.value == pytest.approx(best)
    assert study.direction.name == ("MAXIMIZE" if metric == "val/acc" else "MINIMIZE")
    assert study.best_value == pytest.approx(best)


@pytest.mark.parametrize(
    ("model", "keys"),
    [
        ("dropout_lab.MLPClassifier", ["model.dropout", "model.input_dropout"]),
        ("dropout_lab.CNNClassifier", ["model.dropout", "model.conv_dropout"]),
    ],
)
def test_the_default_space_is_the_models_dropout_rates_not_its_learn_dropout_switch(model, keys):
    assert [param.key for param in parse_space(None, model)] == keys


def test_the_default_space_of_a_learned_rate_starts_strictly_between_0_and_1():
    assert [(p.low, p.high) for p in parse_space(None, "dropout_lab.MLPClassifier", learn_dropout=True)] == [
        (0.05, 0.8)
    ] * 2


def test_learn_dropout_with_the_default_space_passes_every_check_before_the_study(tmp_path, monkeypatch, capsys):
    def stop_at_the_study(*args):
        raise SpaceError("stopped where the study opens")

    monkeypatch.setattr(tuning, "open_study", stop_at_the_study)
    with pytest.raises(SystemExit):
        tune(TuneCLI(["--model.learn_dropout=true", f"--trainer.default_root_dir={tmp_path}"]))
    assert capsys.readouterr().err == "error: stopped where the study opens\n"
