"""What a grid sweep over seeds found: per grid point, the mean, standard deviation and count over seeds.

``tune.py --tune.sampler=grid`` runs every point of the grid once per seed and stores the final values of
``SUMMARY_METRICS`` as user attributes of each trial; this file turns the study's trials into:

- ``summary_rows``: one row per grid point (the seed is what is averaged over, not a key);
- ``write_csv`` and ``format_table``: ``summary.csv`` in the study's folder, and the same as printed text;
- ``summary_figure``: final gap/loss and test/acc against the swept value, mean with standard-error bars,
  one line per value of the other grid keys; ``write_figure`` saves it as ``summary.png`` and into
  TensorBoard (run ``summary`` beside the trials).
"""

import csv
import math
import statistics
import time
from pathlib import Path

import optuna
from torch.utils.tensorboard import SummaryWriter

from dropout_lab.accuracy_interval import wilson_interval

SEED = "seed_everything"  # the grid key of the repeats
FOLD = "data.fold"  # the grid key of the folds, with tune.py --tune.folds
# What each grid trial stores, and the tag it is read from: the best validation accuracy, the gap and the
# training accuracy (eval mode) at the last validation, and the test metrics of the checkpoint the run tests.
SUMMARY_METRICS = {
    "val/acc_best": "hp/val_acc_best",
    "gap/loss": "gap/loss",
    "gap/acc": "gap/acc",
    "train_eval/acc": "train_eval/acc",
    "test/acc": "test/acc",
    "test/nll": "test/nll",
    "test/ece": "test/ece",
}
RATE = "p/"  # with learn_dropout a trial also stores each layer's final learned rate, as p/<layer>
PANELS = {  # the figure's panels: metric, (title, y axis label)
    "gap/loss": ("generalization gap at the end of training", "final gap/loss: val − train_eval loss (nats)"),
    "test/acc": ("test accuracy of the checkpoint train.py tests", "test/acc (fraction of test images right)"),
}


def finished_grid_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [trial for trial in complete if any(metric in trial.user_attrs for metric in SUMMARY_METRICS)]


def summary_rows(trials: list[optuna.trial.FrozenTrial]) -> tuple[list[str], list[dict]]:
    """The grid's keys (without the seed), and one row per point in the grid's order: the keys' values, then
    ``<metric>_mean``, ``_std`` (over two seeds or more, else NaN) and ``_count`` of every metric, and of every
    learned rate (``p/<layer>``) if the trials learned them."""
    keys, points = by_point(trials)
    metrics = [*SUMMARY_METRICS, *learned_rates(trials)]
    rows = []
    for point in sorted(points, key=lambda point: grid_order(trials[0], keys, point)):
        row = dict(zip(keys, point, strict=True)) | {"spread_over": spread_over(points[point])}
        for metric in metrics:
            values = [t.user_attrs[metric] for t in points[point] if t.user_attrs.get(metric) is not None]
            row[f"{metric}_mean"] = statistics.fmean(values) if values else math.nan
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
            row[f"{metric}_count"] = len(values)
        # The test set's own noise: whatever the repeats average over, its n images stay the same ones.
        tested = [t.user_attrs["test/images"] for t in points[point] if t.user_attrs.get("test/images")]
        accuracy = row.get("test/acc_mean", math.nan)
        if tested and not math.isnan(accuracy):
            row["test/acc_ci95_low"], row["test/acc_ci95_high"] = wilson_interval(accuracy * tested[0], tested[0])
        rows.append(row)
    return keys, rows


def spread_over(trials: list[optuna.trial.FrozenTrial]) -> str:
    """Which noise the spread of a point's trials holds: "5 folds × 2 seeds" (which images were held out, and
    the initial weights and dropout masks), or "3 seeds" (only the latter)."""
    seeds = len({trial.params.get(SEED) for trial in trials})
    folds = len({trial.params[FOLD] for trial in trials if FOLD in trial.params})
    return f"{folds} folds × {seeds} seeds" if folds else f"{seeds} seeds"


def learned_rates(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The ``p/<layer>`` names the trials stored, in their layers' order."""
    return list(dict.fromkeys(name for trial in trials for name in trial.user_attrs if name.startswith(RATE)))


def by_point(trials: list[optuna.trial.FrozenTrial]) -> tuple[list[str], dict[tuple, list]]:
    """The grid's keys (without the seed), and the trials of each point: its values of those keys."""
    keys = [key for key in trials[0].params if key not in (SEED, FOLD)]
    points: dict[tuple, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        points.setdefault(tuple(trial.params.get(key) for key in keys), []).append(trial)
    return keys, points


def best_point(trials: list[optuna.trial.FrozenTrial], maximize: bool) -> tuple[dict, list[optuna.trial.FrozenTrial]]:
    """The grid point whose trials' values (the tuned metric) have the best mean over the seeds, and its trials:
    the best single trial is often one lucky seed."""
    keys, points = by_point(trials)
    pick = max if maximize else min
    best = pick(points, key=lambda point: statistics.fmean(trial.value for trial in points[point]))
    return dict(zip(keys, best, strict=True)), points[best]


def grid_order(trial: optuna.trial.FrozenTrial, keys: list[str], point: tuple) -> tuple:
    """The point's place in the grid as --tune.params listed the values (0, 0.2, 0.5 stay in that order)."""
    places = []
    for key, value in zip(keys, point, strict=True):
        choices = getattr(trial.distributions.get(key), "choices", ())
        places.append((choices.index(value) if value in choices else len(choices), str(value)))
    return tuple(places)


def seeds(row: dict) -> int:
    return max(row[f"{metric}_count"] for metric in SUMMARY_METRICS)


def write_csv(keys: list[str], rows: list[dict], path: Path) -> None:
    """One row per grid point; a missing value (a std over one seed) is an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    with partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if isinstance(v, float) and math.isnan(v) else v for key, v in row.items()})
    partial.replace(path)


def partial_path(path: Path) -> Path:
    """Where to write ``path`` before renaming it: every worker of a sweep writes the summary at its end."""
    return path.with_suffix(f".{time.time_ns()}.tmp{path.suffix}")


def format_table(keys: list[str], rows: list[dict]) -> str:
    """The rows as text: the keys, the number of seeds, then mean ± 1 standard error of every metric (and learned
    rate), as the figure draws them (summary.csv has the standard deviation)."""
    metrics = [name.removesuffix("_mean") for name in rows[0] if name.endswith("_mean")]
    header = [*keys, "runs", *metrics, "test/acc 95 % interval"]
    lines = [header] + [
        [
            *(str(row[key]) for key in keys),
            row.get("spread_over", ""),
            *(mean_error(row, m) for m in metrics),
            interval(row),
        ]
        for row in rows
    ]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


def interval(row: dict) -> str:
    """The test set's 95 % interval around the point's mean test/acc, or - where the trials did not count images."""
    if "test/acc_ci95_low" not in row:
        return "-"
    return f"{row['test/acc_ci95_low']:.4f}–{row['test/acc_ci95_high']:.4f}"


def mean_error(row: dict, metric: str) -> str:
    return mean_and_error(row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_count"])


def mean_and_error(mean: float, std: float, count: int) -> str:
    """``mean ± 1 standard error``; the mean alone where there is no spread (one seed)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std / math.sqrt(count):.4f}"


def summary_figure(keys: list[str], rows: list[dict], title: str):
    """Final gap/loss and test/acc against the first grid key: the mean over seeds with ± one standard error,
    one line per combination of the other keys' values; with learned rates, a third panel of each layer's final
    rate. A numeric key spanning a factor of 10 or more (a training-set size) goes on a log axis."""
    from matplotlib.figure import Figure  # imported on use: matplotlib takes a second to import

    x_key, line_keys = keys[0], keys[1:]
    x_values = list(dict.fromkeys(row[x_key] for row in rows))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_values)
    log_x = numeric and min(x_values) > 0 and max(x_values) >= 10 * min(x_values)
    lines: dict[tuple, list[dict]] = {}
    for row in sorted(rows, key=lambda row: row[x_key]) if numeric else rows:  # a line goes left to right
        lines.setdefault(tuple(row[key] for key in line_keys), []).append(row)
    counts = sorted({seeds(row) for row in rows})
    spreads = list(dict.fromkeys(row.get("spread_over", "") for row in rows if "folds" in row.get("spread_over", "")))
    spread = " or ".join(spreads) or (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}") + " seeds"
    rates = [name.removesuffix("_mean") for name in rows[0] if name.startswith(RATE) and name.endswith("_mean")]
    panels = [(metric, panel, ylabel, [metric]) for metric, (panel, ylabel) in PANELS.items()]
    if rates:
        panels.append(("p", "learned drop rate of each layer at the end", "learned p (0 to 1)", rates))

    figure = Figure(figsize=(5.5 * len(panels), 4.5), layout="constrained")
    for axes, (metric, panel, ylabel, series) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        for line, members in lines.items():
            x = [row[x_key] if numeric else x_values.index(row[x_key]) for row in members]
            for name in series:
                mean = [row[f"{name}_mean"] for row in members]
                error = [standard_error(row, name) for row in members]
                label = ", ".join(f"{key}={value}" for key, value in zip(line_keys, line, strict=True))
                if metric == "p":  # one line per layer
                    label = f"{name.removeprefix(RATE)} {label}".strip()
                axes.errorbar(x, mean, yerr=error, marker="o", capsize=4, label=label or "mean of the runs")
        if metric.startswith("gap/"):
            axes.axhline(0, color="grey", linewidth=0.8, linestyle=":")  # no gap
        if log_x:
            axes.set_xscale("log")
            axes.set_xticks(x_values, [str(value) for value in x_values])
            axes.minorticks_off()
        elif not numeric:
            axes.set_xticks(range(len(x_values)), [str(value) for value in x_values])
        if metric == "p":
            axes.set_ylim(0, 1)
        axes.set(xlabel=axis_label(x_key) + (", log scale" if log_x else ""), ylabel=ylabel, title=panel)
        axes.grid(alpha=0.3)
        axes.legend(title="error bars: ± 1 standard error", fontsize="small", title_fontsize="small")
    figure.suptitle(f"{title}: mean ± 1 standard error over {spread} per point")
    return figure


def standard_error(row: dict, metric: str) -> float:
    std, n = row[f"{metric}_std"], row[f"{metric}_count"]
    return 0.0 if math.isnan(std) else std / math.sqrt(n)


def axis_label(key: str) -> str:
    if key.endswith("dropout"):
        return f"{key} (drop probability p, 0 to 1)"
    if key.endswith("lr"):
        return f"{key} (learning rate)"
    if key.endswith("train_subset"):
        return f"{key} (training images)"
    return key


def write_figure(figure, folder: Path, step: int) -> Path:
    """``summary.png`` in ``folder``, and the same image in TensorBoard (run ``summary``, at ``step``)."""
    path = folder / "summary.png"
    folder.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    figure.savefig(partial, dpi=120)
    partial.replace(path)
    with SummaryWriter(str(folder / "summary")) as writer:
        writer.add_figure("summary", figure, global_step=step, close=False)
    return path
