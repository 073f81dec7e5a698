"""A grid sweep's summary: means and standard deviations over seeds, the CSV, the table and the figure.

The studies here are made up in the storage (no training): the values are known, so the summary is checked
against a computation by hand.
"""

import csv
import math
import random
import statistics
from pathlib import Path

import optuna
import pytest
from conftest import read_events
from matplotlib.container import ErrorbarContainer

from dropout_lab.sweep_summary import (
    SUMMARY_METRICS,
    finished_grid_trials,
    seeds,
    summary_figure,
    summary_rows,
    write_figure,
)
from dropout_lab.tuning import TuneCLI, tune

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
DROPOUTS, LRS = (0.5, 0, 0.7), (0.01, 0.001)  # --tune.params order, which the rows keep
SEEDS = {(0.7, 0.001): (0,)}  # one point finished for one seed only; every other for three


def made_up_grid(storage: str | None = None) -> tuple[optuna.Study, dict]:
    """A finished 3 × 2 grid over seeds, and each point's values per metric, as the trials hold them."""
    study = optuna.create_study(study_name="tune", storage=storage, direction="maximize")
    distributions = {
        "model.dropout": optuna.distributions.CategoricalDistribution(DROPOUTS),
        "model.lr": optuna.distributions.CategoricalDistribution(LRS),
        # A list of values, as tune.py stored the seeds before a grid could grow by seeds: it still summarizes.
        "seed_everything": optuna.distributions.CategoricalDistribution((0, 1, 2)),
    }
    rng = random.Random(0)
    values = {}
    for seed in (0, 1, 2):
        for dropout in DROPOUTS:
            for lr in LRS:
                if seed not in SEEDS.get((dropout, lr), (0, 1, 2)):
                    continue
                attrs = {metric: rng.uniform(-1, 1) for metric in SUMMARY_METRICS}
                params = {"model.dropout": dropout, "model.lr": lr, "seed_everything": seed}
                trial = optuna.trial.create_trial(
                    value=attrs["val/acc_best"], params=params, distributions=distributions, user_attrs=attrs
                )
                study.add_trial(trial)
                for metric, value in attrs.items():
                    values.setdefault((dropout, lr), {}).setdefault(metric, []).append(value)
    # A failed trial and a search's trial (no summary values) are left out.
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"fail_reason": "x"}))
    study.add_trial(optuna.trial.create_trial(value=0.9))
    return study, values


def test_summary_only_writes_the_mean_and_std_over_seeds_of_every_grid_point(tmp_path, capsys):
    _, values = made_up_grid(f"sqlite:///{tmp_path / 'optuna.db'}")

    tune(TuneCLI(["--tune.summary_only=true", f"--trainer.default_root_dir={tmp_path}"]))

    with (tmp_path / "tune" / "summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    points = [(float(row["model.dropout"]), float(row["model.lr"])) for row in rows]
    assert points == [(dropout, lr) for dropout in DROPOUTS for lr in LRS]  # one row each, in the grid's order
    for row, point in zip(rows, points, strict=True):
        for metric in SUMMARY_METRICS:
            seeds = values[point][metric]
            assert float(row[f"{metric}_mean"]) == pytest.approx(sum(seeds) / len(seeds))
            assert int(row[f"{metric}_count"]) == len(seeds)
            if len(seeds) > 1:
                mean = sum(seeds) / len(seeds)
                std = (sum((v - mean) ** 2 for v in seeds) / (len(seeds) - 1)) ** 0.5
                assert float(row[f"{metric}_std"]) == pytest.approx(std)
            else:
                assert row[f"{metric}_std"] == ""  # no spread from one seed
    out = capsys.readouterr().out
    first = values[(0.5, 0.01)]["test/acc"]
    error = statistics.stdev(first) / math.sqrt(len(first))  # as the figure draws it
    assert f"{statistics.fmean(first):.4f} ± {error:.4f}" in out and "mean ± 1 standard error" in out
    assert (tmp_path / "tune" / "summary.png").exists()


def test_the_figure_has_one_line_per_other_grid_value_and_a_point_per_swept_value(tmp_path):
    study, values = made_up_grid()
    keys, rows = summary_rows(finished_grid_trials(study))
    assert keys == ["model.dropout", "model.lr"]

    figure = summary_figure(keys, rows, "study 'tune'")

    gap, test = figure.axes
    for axes, metric in ((gap, "gap/loss"), (test, "test/acc")):
        lines = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
        assert [line.get_label() for line in lines] == ["model.lr=0.01", "model.lr=0.001"]
        for line, lr in zip(lines, LRS, strict=True):
            x, y = line.lines[0].get_data()
            assert list(x) == sorted(DROPOUTS)  # the swept value on the x axis, left to right
            assert list(y) == pytest.approx([statistics.fmean(values[(d, lr)][metric]) for d in sorted(DROPOUTS)])
        assert "drop probability" in axes.get_xlabel() and axes.get_legend() is not None
    assert "nats" in gap.get_ylabel() and "standard error" in figure.get_suptitle()
    assert "1–3 seeds" in figure.get_suptitle()

    png = write_figure(figure, tmp_path, step=len(rows))
    assert png == tmp_path / "summary.png" and png.stat().st_size > 10_000
    assert read_events(Path(tmp_path / "summary")).Tags()["images"] == ["summary"]


def test_the_error_bars_are_one_standard_error_over_the_seeds():
    study, values = made_up_grid()
    keys, rows = summary_rows(finished_grid_trials(study))

    figure = summary_figure(keys, rows, "study 'tune'")

    for axes, metric in zip(figure.axes, ("gap/loss", "test/acc"), strict=True):
        line = next(c for c in axes.containers if isinstance(c, ErrorbarContainer))  # model.lr=0.01, three seeds
        (bars,) = line.lines[2]
        half_lengths = [abs(top[1] - bottom[1]) / 2 for bottom, top in bars.get_segments()]
        seeds = [values[(dropout, 0.01)][metric] for dropout in sorted(DROPOUTS)]
        assert half_lengths == pytest.approx([statistics.stdev(v) / math.sqrt(len(v)) for v in seeds])


def grid_trial(dropout: float, seed: int, attrs: dict) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        value=0.5,
        params={"model.dropout": dropout, "seed_everything": seed},
        distributions={
            "model.dropout": optuna.distributions.CategoricalDistribution((0, 0.5)),
            "seed_everything": optuna.distributions.IntDistribution(0, 1),
        },
        user_attrs=attrs,
    )


def test_two_seeds_give_a_standard_deviation():
    trials = [grid_trial(0.5, seed, {"test/acc": acc}) for seed, acc in ((0, 0.8), (1, 0.9))]
    _, (row,) = summary_rows(trials)
    assert row["test/acc_std"] == pytest.approx(statistics.stdev([0.8, 0.9]))


def test_the_seeds_of_a_point_are_those_of_its_most_complete_metric():
    # A metric that a trial did not store (a run without a test set, an older study) does not make it 0 seeds.
    trials = [grid_trial(0.5, seed, {"test/acc": 0.8}) for seed in (0, 1)]
    _, (row,) = summary_rows(trials)
    assert row["gap/loss_count"] == 0 and seeds(row) == 2
