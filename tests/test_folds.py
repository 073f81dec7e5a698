"""k-fold cross-validation: --data.folds=k --data.fold=i, and tune.py --tune.folds=k over a grid."""

import csv
import math
import re

import lightning as L
import optuna
import pytest
import torch
from test_tune import finish, hold_until_both_workers_run, tune_process

from dropout_lab import MLPClassifier, MNIST5kDataModule
from dropout_lab.accuracy_interval import AccuracyInterval, wilson_interval
from dropout_lab.sweep_summary import FOLD, SEED, format_table, summary_figure, summary_rows
from dropout_lab.tuning import TuneCLI, grid_points, grid_space, parse_entry, tune

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def fold_data(folds: int, fold: int, **kwargs) -> MNIST5kDataModule:
    data = MNIST5kDataModule(folds=folds, fold=fold, **kwargs)
    data.setup("fit")
    return data


def image_keys(images: torch.Tensor) -> list[bytes]:
    """Each image's bytes: the embedded digits are all different, so an image names itself."""
    return [image.numpy().tobytes() for image in images]


@pytest.mark.parametrize("folds", [2, 5])
def test_the_folds_are_disjoint_and_validate_every_pool_image_once(folds):
    splits = [fold_data(folds, fold) for fold in range(folds)]
    pool = image_keys(splits[0].train_set.images) + image_keys(splits[0].val_set.images)
    assert len(set(pool)) == len(pool) == 4500  # every image outside the test set, once
    validated = [key for data in splits for key in image_keys(data.val_set.images)]
    assert sorted(validated) == sorted(pool)  # each pool image validated exactly once
    for data in splits:
        trained, held = set(image_keys(data.train_set.images)), set(image_keys(data.val_set.images))
        assert not trained & held and len(trained) + len(held) == len(pool)
        assert set(image_keys(data.train_eval_set.images)) <= trained  # the gap's training side: trained images


def test_every_fold_holds_its_share_of_each_class():
    for fold in range(4):
        counts = torch.bincount(fold_data(4, fold).val_set.labels, minlength=10)
        assert counts.min() >= 450 // 4 and counts.max() <= -(-450 // 4)  # 450 training digits per class


def test_the_test_set_is_the_same_in_every_fold_and_the_folds_the_same_every_time():
    first, again, other = fold_data(3, 0), fold_data(3, 0), fold_data(3, 2)
    default = MNIST5kDataModule()
    default.setup("fit")
    assert torch.equal(first.test_set.images, other.test_set.images)
    assert torch.equal(first.test_set.images, default.test_set.images)  # as without folds
    assert torch.equal(first.val_set.images, again.val_set.images)  # seeded: every DDP rank and a resume agree
    assert torch.equal(first.train_set.images, again.train_set.images)


def test_train_subset_draws_from_the_folds_training_part():
    data = fold_data(5, 3, train_subset=200)
    assert len(data.train_set) == 200 and len(data.val_set) == 900
    assert set(image_keys(data.train_set.images)) <= set(image_keys(fold_data(5, 3).train_set.images))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"folds": 1}, r"folds=1: k-fold cross-validation needs --data.folds=2 or more"),
        ({"folds": 451}, r"folds=451 is more than the 450 images of the smallest class"),
        ({"folds": 5, "fold": 5}, r"fold=5 is not one of the 5 folds: choose --data.fold from 0 to 4"),
        ({"folds": 5, "fold": -1}, r"fold=-1 is not one of the 5 folds"),
        ({"fold": 2}, r"fold=2 picks one of --data.folds, which is not given"),
        ({"folds": 5, "val_size": 300}, r"val_size=300 and folds=5 both choose the validation images"),
        ({"folds": 2.5}, r"folds must be an integer"),
    ],
)
def test_bad_fold_settings_are_refused_in_one_line_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        MNIST5kDataModule(**kwargs)
    assert "\n" not in str(error.value)


# --- tune.py --tune.folds=k: every grid point on every fold -----------------------------------------------


def test_a_grid_with_folds_runs_every_point_on_every_fold_of_a_seed_before_the_next_seed():
    points = grid_points(grid_space([parse_entry("model.dropout=categorical:0:0.5")], repeats=2, folds=3))
    expected = [(d, f, s) for s in (0, 1) for f in (0, 1, 2) for d in (0, 0.5)]
    assert [(p["model.dropout"], p[FOLD], p[SEED]) for p in points] == expected


def grid_trial(dropout: float, fold: int, seed: int, accuracy: float, images: int = 500):
    distributions = {
        "model.dropout": optuna.distributions.CategoricalDistribution((0, 0.5)),
        FOLD: optuna.distributions.IntDistribution(0, 2),
        SEED: optuna.distributions.IntDistribution(0, 1),
    }
    params = {"model.dropout": dropout, FOLD: fold, SEED: seed}
    attrs = {"point": params, "test/acc": accuracy, "test/images": images}
    return optuna.trial.create_trial(value=accuracy, params=params, distributions=distributions, user_attrs=attrs)


def test_the_summary_over_folds_and_seeds_equals_a_hand_computation():
    accuracies = {(0, f, s): 0.90 + 0.01 * f + 0.002 * s for f in range(3) for s in range(2)}
    accuracies |= {(0.5, f, s): 0.95 - 0.02 * f for f in range(3) for s in range(2)}
    trials = [grid_trial(d, f, s, acc) for (d, f, s), acc in accuracies.items()]
    keys, rows = summary_rows(trials)
    assert keys == ["model.dropout"]
    for row in rows:
        values = [acc for (d, _, _), acc in accuracies.items() if d == row["model.dropout"]]
        mean = sum(values) / 6
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 5)
        assert row["test/acc_count"] == 6 and row["spread_over"] == "3 folds × 2 seeds"
        assert row["test/acc_mean"] == pytest.approx(mean) and row["test/acc_std"] == pytest.approx(std)
        # The 95 % interval of the 500 test images around the mean: the roots of (p̂ - p)² = z² p (1 - p) / n.
        z, n = 1.959964, 500
        a, b, c = 1 + z * z / n, -(2 * mean + z * z / n), mean * mean
        roots = sorted(((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a), (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
        assert (row["test/acc_ci95_low"], row["test/acc_ci95_high"]) == pytest.approx(roots)
    figure = summary_figure(keys, rows, "study 'tune'")
    assert "3 folds × 2 seeds" in figure.get_suptitle()
    assert "3 folds × 2 seeds" in format_table(keys, rows) and "95 % interval" in format_table(keys, rows)


@pytest.mark.parametrize(("correct", "n"), [(480, 500), (500, 500), (0, 20), (7, 10)])
def test_the_wilson_interval_equals_the_roots_of_its_quadratic(correct, n):
    z, p = 1.959964, correct / n
    a, b, c = 1 + z * z / n, -(2 * p + z * z / n), p * p
    root = math.sqrt(b * b - 4 * a * c)
    expected = (max(0.0, (-b - root) / (2 * a)), min(1.0, (-b + root) / (2 * a)))
    assert wilson_interval(correct, n) == pytest.approx(expected, abs=1e-12)
    low, high = wilson_interval(correct, n)
    assert 0 <= low <= p <= high <= 1 and high > low  # not empty at 100 % or 0 %


def test_test_logs_the_interval_of_its_own_accuracy():
    model, data = MLPClassifier(hidden=[8]), MNIST5kDataModule(test_size=300)
    interval = AccuracyInterval()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[interval])
    (logged,) = trainer.test(model, data, verbose=False)
    assert interval.tested == 300
    low, high = wilson_interval(round(logged["test/acc"] * 300), 300)
    assert (logged["test/acc_low"], logged["test/acc_high"]) == pytest.approx((low, high))


@pytest.mark.parametrize(("held", "asked"), [(None, 3), (3, None), (3, 2)])
def test_folds_other_than_the_studys_are_refused_before_any_trial(tmp_path, capsys, held, asked):
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    study.set_user_attr("sampler", "grid")
    study.set_user_attr("folds", held)
    study.add_trial(grid_trial(0, 0, 0, 0.9))
    args = ["--tune.sampler=grid", "--tune.params=[model.dropout=categorical:0:0.5]", "--model.hidden=[8]"]
    args += [f"--tune.folds={asked}"] if asked else []
    with pytest.raises(SystemExit) as exit:
        tune(TuneCLI([*args, f"--trainer.default_root_dir={tmp_path}"]))
    assert exit.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    said = f"--tune.folds={asked}" if asked else "this command has no --tune.folds"
    assert line.startswith(f"error: {said}: study 'tune' was started with")
    assert len(optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials) == 1


@pytest.mark.slow
def test_two_workers_run_every_point_fold_and_seed_once_and_the_summary_counts_them(tmp_path):
    grid = ["--tune.sampler=grid", "--tune.params=[model.dropout=categorical:0:0.5]", "--tune.folds=2"]
    args = [*grid, *hold_until_both_workers_run(tmp_path)]
    workers = [tune_process(*args, root=tmp_path), tune_process(*args, root=tmp_path)]
    outputs = [finish(worker) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert "Grid: 2 points × 2 folds × 1 seeds = 4 trials." in outputs[0]
    assert "Over folds and seeds (mean ± 1 standard error" in outputs[0] + outputs[1]

    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    done = sorted((t.params["model.dropout"], t.params[FOLD]) for t in study.trials if t.state.name == "COMPLETE")
    assert done == [(0, 0), (0, 1), (0.5, 0), (0.5, 1)]  # each (point, fold, seed) once
    by_worker = [set(re.findall(r"^Trial (\d+):", out, re.MULTILINE)) for out in outputs]
    assert by_worker[0].isdisjoint(by_worker[1]) and all(by_worker)
    config = (tmp_path / "tune" / "dropout=0.5,fold=1,seed=0" / "config.yaml").read_text()
    assert "folds: 2" in config and "fold: 1" in config

    rows = list(csv.DictReader((tmp_path / "tune" / "summary.csv").open()))
    assert [(row["model.dropout"], row["test/acc_count"], row["spread_over"]) for row in rows] == [
        ("0", "2", "2 folds × 1 seeds"),
        ("0.5", "2", "2 folds × 1 seeds"),
    ]
    assert all(
        float(row["test/acc_ci95_low"]) < float(row["test/acc_mean"]) < float(row["test/acc_ci95_high"]) for row in rows
    )
    best = (tmp_path / "tune" / "best_config.yaml").read_text()
    assert "folds: null" in best  # the best point is reproduced on the default split


def test_a_search_with_folds_takes_each_trials_mean_over_its_folds_and_prunes_nothing(tmp_path, capsys):
    args = ["--tune.params=[model.dropout=float:0.1:0.6]", "--tune.n_trials=1", "--tune.folds=2"]
    args += ["--tune.pruner=median", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
    args += ["--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--model.hidden=[16]"]
    tune(TuneCLI([*args, f"--trainer.default_root_dir={tmp_path}"]))
    assert "--tune.pruner=median is left out: with --tune.folds" in capsys.readouterr().out
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    (trial,) = study.trials
    assert len(trial.user_attrs["fold_values"]) == 2 and trial.intermediate_values == {}
    assert trial.value == pytest.approx(sum(trial.user_attrs["fold_values"]) / 2)
    runs = sorted(path.name for path in (tmp_path / "tune").iterdir() if path.is_dir())
    assert [name.rpartition(",")[2] for name in runs] == ["fold=0", "fold=1"]
