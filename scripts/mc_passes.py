"""Test error against the number of MC dropout passes, and the error after abstaining on the least certain images.

    python scripts/mc_passes.py measure RUN/checkpoints/epoch=11-step=756.ckpt ... --out mlp.json
    python scripts/mc_passes.py plot mlp.json cnn.json --out docs/img/mc_passes.png
    python scripts/mc_passes.py rotated-pngs RUN/checkpoints/last.ckpt ood/rotated90

``measure``, for each checkpoint: its test split, loaded as train.py's test loads it (the checkpoint's DataModule
and its arguments), the deterministic pass (weight scaling: eval mode) and ``--passes`` (default 100) passes with the
dropout layers on, drawn once from ``--seed``. The MC prediction with N passes is the mean of the first N of them,
so every N is a prefix of the same sample (as Srivastava et al. 2014, Fig. 11, plot the test error against N). For
each N: the test error, and the error on the answers kept when abstaining on the least certain 5 % and 20 % of the
test images, ranked by the top probability and (N > 1) by the mutual information; the deterministic pass is ranked by
its top probability. Several checkpoints (seeds) give the mean and the standard deviation over them.

``rotated-pngs`` writes the checkpoint's test digits rotated by 90 degrees as PNG files: an out-of-distribution set
made offline, for ``train.py test --ood_data=ImageFilesDataModule --ood_data.paths=FOLDER``.

It reuses the package's functions: ``mc_dropout.sample_probs`` and ``dropout_layers_on``, the scores of
``uncertainty.prediction_scores``, ``selective.risk_at_coverage``.
"""

import argparse
import importlib
import json
import statistics
from pathlib import Path

import torch

from dropout_lab import load_classifier
from dropout_lab.checkpointing import load_checked
from dropout_lab.mc_dropout import dropout_layers_on, sample_probs
from dropout_lab.selective import risk_at_coverage
from dropout_lab.uncertainty import prediction_scores

PASSES = (1, 2, 5, 10, 20, 50, 100)
ABSTAIN = (0.05, 0.20)  # the shares of the test images abstained on, least certain first


def load_test_split(ckpt: str | Path):
    """The checkpoint's DataModule, of the class it names, built by Lightning from its saved arguments, set up for
    testing."""
    module, _, name = load_checked(ckpt)["datamodule_hyper_parameters"]["_class_path"].rpartition(".")
    data = getattr(importlib.import_module(module), name).load_from_checkpoint(ckpt, weights_only=True)
    data.setup("test")
    return data


@torch.inference_mode()
def sample_test_passes(ckpt: str | Path, passes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The deterministic probabilities (1, images, classes), ``passes`` MC samples (passes, images, classes) and
    the targets of the checkpoint's test split."""
    model = load_classifier(ckpt)
    model.eval()
    deterministic, mc, targets = [], [], []
    batches = list(load_test_split(ckpt).test_dataloader())  # before seeding: a DataLoader draws its own seed
    torch.manual_seed(seed)
    for x, y in batches:
        model.eval()
        deterministic.append(sample_probs(model, x, 1))
        dropout_layers_on(model)  # as test's MC loop: the dropout layers on, BatchNorm in eval mode
        mc.append(sample_probs(model, x, passes))
        targets.append(y)
    return torch.cat(deterministic, dim=1), torch.cat(mc, dim=1), torch.cat(targets)


def errors(samples: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The test error of the mean of ``samples`` and the error after abstaining, ranked by each score."""
    scores = prediction_scores(samples)
    wrong = scores["probs"].argmax(dim=-1) != target
    out = {"error": wrong.double().mean().item()}
    rankings = {"max_prob": scores["max_prob"]}
    if "mutual_information" in scores:
        rankings["mutual_information"] = -scores["mutual_information"]  # the least disagreement is the surest
    for name, confidence in rankings.items():
        for share in ABSTAIN:
            key = f"error_abstain_{round(share * 100)}_by_{name}"
            out[key] = risk_at_coverage(confidence, wrong, 1 - share).item()
    return out


def measure(ckpt: str | Path, passes: tuple[int, ...] = PASSES, seed: int = 0) -> dict:
    """Errors of one checkpoint: ``deterministic`` and ``mc`` (one entry per N of ``passes``, prefixes of a sample)."""
    deterministic, mc, target = sample_test_passes(ckpt, max(passes), seed)
    return {
        "checkpoint": str(ckpt),
        "images": len(target),
        "seed": seed,
        "deterministic": errors(deterministic, target),
        "mc": {str(n): errors(mc[:n], target) for n in passes},
    }


def summary(results: list[dict]) -> dict:
    """Mean and standard deviation over checkpoints of every figure of ``measure``."""

    def spread(values: list[float]) -> dict[str, float]:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "std": std, "values": values}

    first = results[0]
    out = {"deterministic": {k: spread([r["deterministic"][k] for r in results]) for k in first["deterministic"]}}
    out["mc"] = {n: {k: spread([r["mc"][n][k] for r in results]) for k in first["mc"][n]} for n in first["mc"]}
    return out


def percent(figure: dict[str, float]) -> str:
    return f"{100 * figure['mean']:.2f} ± {100 * figure['std']:.2f}"


def print_tables(label: str, summed: dict, count: int) -> None:
    """Markdown tables, in percent: mean ± standard deviation over the checkpoints."""
    det = summed["deterministic"]
    print(f"\n{label}: test error (%) against N, mean ± std over {count} checkpoints\n")
    print("| pass | N | test error (%) |\n|---|---|---|")
    print(f"| deterministic (weight scaling) | 1 | {percent(det['error'])} |")
    for n, figures in summed["mc"].items():
        print(f"| MC dropout | {n} | {percent(figures['error'])} |")
    print(f"\n{label}: error (%) of the answers kept, abstaining on the least certain share\n")
    head = "| pass | ranked by | all answered | abstain 5 % | abstain 20 % |\n|---|---|---|---|---|"
    print(head)
    print(
        f"| deterministic | max prob | {percent(det['error'])} | {percent(det['error_abstain_5_by_max_prob'])} "
        f"| {percent(det['error_abstain_20_by_max_prob'])} |"
    )
    for n, figures in summed["mc"].items():
        for name in ("max_prob", "mutual_information"):
            if f"error_abstain_5_by_{name}" in figures:
                print(
                    f"| MC, N = {n} | {name.replace('_', ' ')} | {percent(figures['error'])} "
                    f"| {percent(figures[f'error_abstain_5_by_{name}'])} "
                    f"| {percent(figures[f'error_abstain_20_by_{name}'])} |"
                )


def plot(files: list[str], out: str) -> None:
    """Test error against N (log axis), mean ± std band, with the deterministic level as a dashed line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.2))
    axes = figure.subplots()
    for file, color in zip(files, ["tab:blue", "tab:orange", "tab:green", "tab:red"], strict=False):
        data = json.loads(Path(file).read_text())
        summed, label = data["summary"], data["label"]
        ns = [int(n) for n in summed["mc"]]
        mean = [100 * summed["mc"][str(n)]["error"]["mean"] for n in ns]
        std = [100 * summed["mc"][str(n)]["error"]["std"] for n in ns]
        axes.plot(ns, mean, marker="o", color=color, label=f"{label}, MC dropout (mean of N passes)")
        low, high = [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)]
        axes.fill_between(ns, low, high, color=color, alpha=0.2)
        det = summed["deterministic"]["error"]
        axes.axhline(100 * det["mean"], color=color, linestyle="--", label=f"{label}, deterministic (weight scaling)")
        axes.axhspan(100 * (det["mean"] - det["std"]), 100 * (det["mean"] + det["std"]), color=color, alpha=0.08)
        seeds = len(data["runs"])
    axes.set(xscale="log", xlabel="N, dropout passes averaged", ylabel="test error (%)")
    axes.set_xticks(ns, [str(n) for n in ns])
    axes.set_title(f"test error against N (500 test digits; mean ± std over {seeds} seeds)", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def rotated_pngs(ckpt: str, folder: str) -> int:
    """Write the checkpoint's test images rotated by 90 degrees (counter-clockwise) as PNG files into ``folder``."""
    from torchvision.io import write_png

    images = load_test_split(ckpt).test_set.images
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(torch.rot90(images, 1, dims=(-2, -1))):
        write_png(image.contiguous(), str(Path(folder) / f"rotated_{i:04d}.png"))
    return len(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure", help="errors against N of one or more checkpoints (seeds)")
    run.add_argument("checkpoints", nargs="+")
    run.add_argument("--passes", type=int, nargs="+", default=list(PASSES), help="the N reported")
    run.add_argument("--seed", type=int, default=0, help="seed of the dropout masks")
    run.add_argument("--label", default="model", help="name of the model in the tables and the figure")
    run.add_argument("--out", help="write the results as JSON here")
    draw = commands.add_parser("plot", help="the figure of test error against N, from measure's JSON files")
    draw.add_argument("files", nargs="+")
    draw.add_argument("--out", required=True, help="PNG file")
    pngs = commands.add_parser("rotated-pngs", help="the test digits rotated by 90 degrees, as PNG files")
    pngs.add_argument("checkpoint")
    pngs.add_argument("folder")
    args = parser.parse_args(argv)
    if args.command == "measure":
        runs = [measure(ckpt, tuple(args.passes), args.seed) for ckpt in args.checkpoints]
        summed = summary(runs)
        print_tables(args.label, summed, len(runs))
        if args.out:
            Path(args.out).write_text(json.dumps({"label": args.label, "runs": runs, "summary": summed}, indent=1))
    elif args.command == "plot":
        plot(args.files, args.out)
    else:
        print(f"wrote {rotated_pngs(args.checkpoint, args.folder)} PNG files into {args.folder}")


if __name__ == "__main__":
    main()
