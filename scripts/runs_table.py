"""Print a Markdown table of the training runs under a TensorBoard folder: the sweep tables of the README.

python scripts/runs_table.py runs/sweep_mlp

Runs of ``train.py validate|test|predict`` are left out: they record no hyperparameters of their own.
"""

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

COLUMNS = ["gap/loss", "gap/acc", "train_eval/acc", "val/acc", "test/acc"]


def summarize(run_dir: Path) -> tuple[dict, dict[str, float]] | None:
    """The run's hyperparameters (from its HParams summary) and the last value of each column; None without them."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    try:
        start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    except KeyError:  # no HParams summary: an evaluation of a checkpoint, not a training run
        return None
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    params = {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}
    return params, {tag: events.Scalars(tag)[-1].value for tag in COLUMNS if tag in events.Tags()["scalars"]}


def main(root: str) -> None:
    print("| model | dropout p | input / channel p | augment | " + " | ".join(f"final {tag}" for tag in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for run_dir in sorted({path.parent for path in Path(root).rglob("events.out.tfevents.*")}):
        summary = summarize(run_dir)
        if summary is None:
            continue
        params, values = summary
        cells = [f"{values[tag]:.3f}" if tag in values else "-" for tag in COLUMNS]
        # The MLP's other rate is its input dropout, the CNN's its channel dropout after each conv block.
        other = params.get("input_dropout", params.get("conv_dropout"))
        other = "-" if other is None else f"{other:g}"
        augment = "yes" if params.get("augment") else "no"
        print(f"| {params['model']} | {params['dropout']:g} | {other} | {augment} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
