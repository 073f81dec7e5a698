"""Fixed, learned (Concrete) and scheduled (early, late) dropout side by side, over seeds: one Markdown table.

python scripts/compare_dropout_methods.py runs/methods_mlp --cutoff 5                       # the MLP, 15 epochs
python scripts/compare_dropout_methods.py runs/methods_cnn --cutoff 2 --model=CNNClassifier --trainer.max_epochs=5
python scripts/compare_dropout_methods.py runs/methods_mlp --table-only                      # read, don't train

Every run is an ordinary ``python train.py`` run (with ``--model.mc_samples=30``, so its test also scores
MC dropout), written to ``ROOT/<method>_s<seed>/``; finished runs already there are read, not trained again,
so an interrupted comparison continues (a run stopped midway is named, to be deleted). Flags after ROOT go
to every run. The table gives the mean and the standard deviation over seeds of each run's final values
(the ``hp/`` summaries TensorBoard's HParams tab shows) and the wall time from the run's first to its last
TensorBoard event. ``--cutoff`` is the early and late schedules' epoch: it must fall inside the run.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "fixed": [],
    "learned": ["--model.learn_dropout=true"],
    "early": ["--model.dropout_schedule=early", "--model.dropout_cutoff_epoch={cutoff}"],
    "late": ["--model.dropout_schedule=late", "--model.dropout_cutoff_epoch={cutoff}"],
}
COLUMNS = {
    "gap/loss": "hp/gap_loss",
    "gap/acc": "hp/gap_acc",
    "val/acc": "val/acc",
    "test/acc": "hp/test_acc",
    "test/nll": "hp/test_nll",
    "test/ece": "hp/test_ece",
    "MC-30 nll": "hp/test_mc_nll",
    "MC-30 ece": "hp/test_mc_ece",
}


def train(run_root: Path, flags: list[str]) -> None:
    command = [sys.executable, str(ROOT / "train.py"), *flags, f"--trainer.default_root_dir={run_root}"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def finished(run_root: Path) -> bool:
    """Whether ``run_root`` holds a run that was trained and tested."""
    return run_root.exists() and "hp/test_acc" in final_values(run_root)


def final_values(run_root: Path) -> dict[str, float]:
    """The last value of every scalar of the one training run under ``run_root``, plus its wall time."""
    folders = sorted({path.parent for path in run_root.glob("lightning_logs/version_*/events.out.tfevents.*")})
    if not folders:
        return {}
    events = EventAccumulator(str(folders[0]), size_guidance={"scalars": 0})
    events.Reload()
    values = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    times = [event.wall_time for tag in events.Tags()["scalars"] for event in events.Scalars(tag)]
    values["wall s"] = max(times) - min(times)
    return values


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(root: Path, seeds: list[int]) -> None:
    rows = {}
    for method in METHODS:
        runs = [final_values(root / f"{method}_s{seed}") for seed in seeds if finished(root / f"{method}_s{seed}")]
        if runs:
            rows[method] = runs
    rates = sorted({tag for runs in rows.values() for run in runs for tag in run if tag.startswith("dropout/p/")})
    header = ["method", "seeds", *COLUMNS, *(f"p {tag.removeprefix('dropout/p/')}" for tag in rates), "wall s"]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for method, runs in rows.items():
        cells = [cell([run[tag] for run in runs if tag in run]) for tag in [*COLUMNS.values(), *rates]]
        wall = statistics.mean(run["wall s"] for run in runs)
        print(f"| {method} | {len(runs)} | " + " | ".join(cells) + f" | {wall:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="folder of the comparison's runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cutoff", type=int, default=5, help="dropout_cutoff_epoch of the early and late runs")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--table-only", action="store_true", help="read the runs there, train none")
    args, flags = parser.parse_known_args()
    if not args.table_only:
        for seed in args.seeds:
            for method in args.methods:
                run_root = args.root / f"{method}_s{seed}"
                if finished(run_root):
                    continue
                if run_root.exists():  # a run stopped midway: the table would read its last epoch as final
                    sys.exit(f"{run_root} holds an unfinished run (no test/acc): delete it to run it again.")
                method_flags = [flag.format(cutoff=args.cutoff) for flag in METHODS[method]]
                train(run_root, [*flags, *method_flags, f"--seed_everything={seed}", "--model.mc_samples=30"])
    table(args.root, args.seeds)


if __name__ == "__main__":
    main()
