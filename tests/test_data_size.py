"""Dropout against the amount of data: --data.train_subset, regularizer weights that follow N, learned rates
that meet from two starts, and a tune.py grid over a data key."""

import csv

import lightning as L
import pytest
import torch
from conftest import QUICK, read_events, run_train, scalars
from test_mnist5k import image_bytes, setup_data

from dropout_lab import MLPClassifier, MNIST5kDataModule, MNISTDataModule
from dropout_lab.dropout import regularizer_weights
from dropout_lab.learned_rates import learned_rates
from dropout_lab.tuning import TuneCLI, tune


@pytest.mark.parametrize("n", [10, 250, 1000, 4000])
def test_the_subset_has_n_training_images_of_every_class_alike(n):
    whole, data = setup_data(), setup_data(train_subset=n)
    assert len(data.train_set) == n
    assert torch.bincount(data.train_set.labels, minlength=10).tolist() == [n // 10] * 10
    assert image_bytes(data.train_set) <= image_bytes(whole.train_set)
    # Validation and test stay as they are; the gap's training side comes from the images trained on.
    assert torch.equal(data.val_set.images, whole.val_set.images)
    assert torch.equal(data.test_set.images, whole.test_set.images)
    assert image_bytes(data.train_eval_set) <= image_bytes(data.train_set)
    assert len(data.train_eval_set) == min(n, len(data.val_set))


def test_the_subset_is_fixed_by_the_data_seed():
    a, b, c = setup_data(train_subset=100), setup_data(train_subset=100), setup_data(train_subset=100, seed=1)
    assert torch.equal(a.train_set.images, b.train_set.images)
    assert not torch.equal(a.train_set.images, c.train_set.images)


@pytest.mark.parametrize(
    ("cls", "value", "message"),
    [
        (MNIST5kDataModule, 9, "train_subset=9 is fewer images than the 10 classes"),
        (MNIST5kDataModule, 4001, "train_subset=4001 is more than the 4000 images of the training split"),
        (MNISTDataModule, 55_001, "train_subset=55001 is more than the 55000 images of the training split"),
        (MNIST5kDataModule, 2.5, "train_subset is a number of training images, got 2.5: give an integer"),
        (MNIST5kDataModule, True, "got True: give an integer"),
    ],
)
def test_a_bad_subset_is_refused_in_one_line_when_the_datamodule_is_built(cls, value, message):
    with pytest.raises(ValueError, match=message) as error:
        cls(train_subset=value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--data.train_subset=5", "--data.train_subset=10 or more"),
        ("--data.train_subset=2.5", "train_subset"),
        ("--model.dropout_lr=0", "dropout_lr is the learned rates' learning rate and must be > 0, got 0"),
    ],
)
def test_train_py_refuses_a_bad_subset_or_dropout_lr_before_writing_anything(tmp_path, flag, message):
    result = run_train(flag, "--model.learn_dropout=true", root=tmp_path, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line != "Seed set to 0"]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], result.stderr
    assert not (tmp_path / "lightning_logs").exists()


def fit_learned(n: int | None, steps: int, **model) -> MLPClassifier:
    L.seed_everything(0, verbose=False)
    model = MLPClassifier(hidden=[32], learn_dropout=True, **model)
    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, MNIST5kDataModule(train_subset=n))
    return model


@pytest.mark.parametrize("n", [500, 4000])
def test_the_regularizer_weights_follow_the_number_of_training_images(n):
    model = fit_learned(n, steps=1)
    assert model.regularizer_weights == pytest.approx((0.1**2 / (2 * n), 1 / n))
    assert regularizer_weights(n) == pytest.approx((0.1**2 / (2 * n), 1 / n))


def test_explicit_regularizer_weights_win_over_the_derived_ones():
    model = fit_learned(500, steps=1, weight_regularizer=1e-6, dropout_regularizer=0.0)
    assert model.regularizer_weights == (1e-6, 0.0)
    model = fit_learned(500, steps=1, dropout_regularizer=1e-5)
    assert model.regularizer_weights == pytest.approx((0.1**2 / 1000, 1e-5))


def test_the_rates_have_their_own_learning_rate_and_no_weight_decay():
    model = MLPClassifier(hidden=[8], learn_dropout=True, dropout_lr=0.05, lr=1e-3, weight_decay=0.1, cosine=False)
    model.configure_model()  # as the Trainer does first: the learned rates swapped in
    weights, rates = model.configure_optimizers().param_groups
    assert (weights["lr"], weights["weight_decay"]) == (1e-3, 0.1)
    assert (rates["lr"], rates["weight_decay"]) == (0.05, 0.0)
    assert all(p.dim() == 0 for p in rates["params"]) and len(rates["params"]) == 2


def test_learned_rates_started_far_apart_meet():
    # 400 steps of a small net on 1,000 digits: from 0.1 and from 0.7 every layer's rate ends within 0.05
    # of the other start's, which the weights' own learning rate (1e-3) could not do (the logit moves by
    # about the learning rate per step: 0.2 in 400 steps, the distance from logit(0.1) to logit(0.7) is 3.0).
    low = learned_rates(fit_learned(1000, steps=400, dropout=0.1, input_dropout=0.1).net)
    high = learned_rates(fit_learned(1000, steps=400, dropout=0.7, input_dropout=0.7).net)
    assert low.keys() == high.keys() and len(low) == 2
    assert all(abs(low[name] - high[name]) < 0.05 for name in low), (low, high)


def test_every_rate_is_logged_at_step_0_too(tmp_path):
    run_train(*QUICK, "--model.learn_dropout=true", "--model.hidden=[32]", root=tmp_path)
    events = read_events(tmp_path / "lightning_logs" / "version_0")
    for tag, start in [("dropout/p/input", 0.2), ("dropout/p/hidden1", 0.5)]:
        points = scalars(events, tag)
        assert [step for step, _ in points] == [0, 3, 7]
        assert points[0][1] == pytest.approx(start)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_a_grid_over_a_data_key_and_the_rate_summarizes_each_combination(tmp_path):
    tiny = [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.hidden=[16]",
    ]
    grid = [
        "--tune.sampler=grid",
        "--tune.params=[data.train_subset=categorical:100:1000, model.dropout=categorical:0.2:0.5]",
        "--tune.repeats=2",
        "--model.learn_dropout=true",
    ]
    tune(TuneCLI([*tiny, *grid, f"--trainer.default_root_dir={tmp_path}"]))
    rows = list(csv.DictReader((tmp_path / "tune" / "summary.csv").open()))
    points = [(row["data.train_subset"], row["model.dropout"], row["test/acc_count"]) for row in rows]
    assert points == [("100", "0.2", "2"), ("100", "0.5", "2"), ("1000", "0.2", "2"), ("1000", "0.5", "2")]
    # With learn_dropout each layer's final learned rate is summarized too, for the rates-against-N figure.
    assert all(0 < float(row["p/hidden1_mean"]) < 1 and row["p/hidden1_count"] == "2" for row in rows)
    assert (tmp_path / "tune" / "summary.png").stat().st_size > 10_000


def test_a_data_key_the_datamodule_does_not_have_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run = ["--tune.params=[data.train_subsett=categorical:100:200]", f"--trainer.default_root_dir={tmp_path}"]
        tune(TuneCLI(run))
    assert "did you mean --data.train_subset?" in capsys.readouterr().err
    assert not tmp_path.joinpath("optuna.db").exists()


def summary_row(n: int, p: float, rate: float | None = None) -> dict:
    metrics = {"val/acc_best": 0.9, "gap/loss": 0.1, "gap/acc": 0.02, "train_eval/acc": 1.0, "test/acc": 0.9}
    metrics |= {"test/nll": 0.3, "test/ece": 0.02} | ({} if rate is None else {"p/hidden": rate})
    values = {f"{name}_{stat}": v for name, value in metrics.items() for stat, v in (("mean", value), ("std", 0.01))}
    return {"data.train_subset": n, "model.dropout": p, **values} | {f"{m}_count": 3 for m in metrics}


def test_a_training_set_size_goes_on_a_log_axis_with_one_line_per_rate_and_a_panel_of_learned_rates():
    from dropout_lab.sweep_summary import summary_figure

    keys = ["data.train_subset", "model.dropout"]
    rows = [summary_row(n, p) for n in (250, 1000, 4000) for p in (0.0, 0.5)]
    figure = summary_figure(keys, rows, "study")
    assert [axes.get_xscale() for axes in figure.axes] == ["log", "log"]
    assert [len(axes.get_lines()) > 0 for axes in figure.axes] == [True, True]
    assert [text.get_text() for text in figure.axes[1].get_legend().get_texts()] == [
        "model.dropout=0.0",
        "model.dropout=0.5",
    ]
    learned = summary_figure(keys[:1], [summary_row(n, 0.5, rate=0.5 - n / 10_000) for n in (250, 4000)], "s")
    assert len(learned.axes) == 3 and learned.axes[2].get_ylim() == (0, 1)
    assert learned.axes[2].get_legend().get_texts()[0].get_text() == "hidden"
    linear = summary_figure(["model.dropout"], [summary_row(4000, p) for p in (0.0, 0.2, 0.5)], "s")
    assert linear.axes[0].get_xscale() == "linear"
