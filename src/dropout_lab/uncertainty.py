"""How sure a classifier is, and whether it is right to be: scores of predicted probabilities.

- ``entropy`` and ``mutual_information``: the uncertainty of one prediction. With Monte Carlo
  dropout (several passes with the dropout layers on), the entropy of the mean prediction splits
  into the mean entropy of the passes (noise in the data) and the mutual information (the part
  that comes from not knowing the weights: the passes disagree).
- ``prediction_scores``: the mean prediction of one or more passes and its scores (max_prob, entropy,
  mutual_information), the one function behind test's metrics and predict's CSV.
- ``calibration_metrics``: accuracy, NLL, ECE and Brier score over a test epoch, and the selective
  prediction's AURC and risk at 80 % coverage (selective.py), as torchmetrics objects, so that the values
  are exact across batches and processes.
- ``UncertaintyFigures``: a reliability diagram, the entropy of right and wrong predictions and the
  risk–coverage curves, drawn with matplotlib into TensorBoard after testing; ``score_histogram`` for
  the out-of-distribution histograms of ood.py.
"""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from dropout_lab.selective import SelectiveRisk, risk_coverage

ECE_BINS = 15
COVERAGE = 0.8  # test/risk_at_80_coverage: the error rate when abstaining on the least confident 20 %
RISK_AT_COVERAGE = f"risk_at_{round(COVERAGE * 100)}_coverage"
SELECTIVE = {"aurc": None, RISK_AT_COVERAGE: COVERAGE}  # metric name: the coverage of SelectiveRisk


def entropy(probs: Tensor) -> Tensor:
    """Entropy in nats of each distribution along the last dimension (0 log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def mutual_information(samples: Tensor) -> Tensor:
    """Entropy of the mean minus the mean entropy of ``samples`` (passes, batch, classes): 0 when they agree."""
    # Clamped: rounding can make it a hair below zero when all passes are equal.
    return (entropy(samples.mean(dim=0)) - entropy(samples).mean(dim=0)).clamp_min(0.0)


def prediction_scores(samples: Tensor) -> dict[str, Tensor]:
    """The mean ``probs`` of ``samples`` (passes, batch, classes), its ``max_prob`` and ``entropy``, and with
    more than one pass the ``mutual_information`` (one pass has none: it would be 0 for every image)."""
    probs = samples.mean(dim=0)
    scores = {"probs": probs, "max_prob": probs.max(dim=-1).values, "entropy": entropy(probs)}
    if len(samples) > 1:
        scores["mutual_information"] = mutual_information(samples)
    return scores


def calibration_metrics(num_classes: int, prefix: str, mutual_information: bool = False) -> MetricCollection:
    """Accuracy, negative log-likelihood, expected calibration error (15 bins) and Brier score of probabilities;
    ``aurc`` and ``risk_at_80_coverage`` ranked by the top probability and, with ``mutual_information``, also
    ``aurc_mutual_information`` and ``risk_at_80_coverage_mutual_information`` ranked by low mutual information."""
    rankings = ["", "_mutual_information"] if mutual_information else [""]
    selective = {name + ranking: SelectiveRisk(c) for ranking in rankings for name, c in SELECTIVE.items()}
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "nll": MeanMetric(),
            "ece": MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1"),
            "brier": MeanMetric(),
            **selective,
        },
        prefix=prefix,
        compute_groups=False,
    )


def update_calibration(
    metrics: MetricCollection, probs: Tensor, target: Tensor, mutual_information: Tensor | None = None
) -> None:
    """Add a batch of predicted probabilities (batch, classes) and true classes to ``calibration_metrics``
    (and the batch's mutual information, for the metrics ranked by it)."""
    error = probs.argmax(dim=-1) != target
    rankings = {"": probs.max(dim=-1).values}
    if mutual_information is not None:
        rankings["_mutual_information"] = -mutual_information  # the least disagreement is the surest
    for ranking, confidence in rankings.items():
        for name in ("aurc", RISK_AT_COVERAGE):
            metrics[name + ranking].update(confidence, error)
    metrics["acc"].update(probs, target)
    metrics["ece"].update(probs, target)
    # A probability of exactly 0 for the true class (float32 underflow) would give an infinite NLL.
    true_class = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    metrics["nll"].update(-true_class.clamp_min(torch.finfo(probs.dtype).tiny).log())
    one_hot = torch.nn.functional.one_hot(target, probs.shape[-1]).to(probs.dtype)
    metrics["brier"].update((probs - one_hot).square().sum(dim=-1))


class UncertaintyFigures(L.Callback):
    """After testing, a reliability diagram and histograms of the predictive entropy, into TensorBoard.

    ``run_test`` (cli.py) runs a deterministic test loop and, with ``mc_samples`` > 1, an MC one;
    the figures, drawn after the last of them, show both. Under DDP they show process 0's share.
    """

    def __init__(self) -> None:
        self.batches: list[tuple[Tensor, Tensor, Tensor | None]] = []
        self.results: dict[str, tuple[Tensor, Tensor]] = {}  # probs and target of each loop, by its label
        self.information: dict[str, Tensor] = {}  # the MC loop's mutual information, for its risk–coverage curve

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and "probs" in outputs:
            information = outputs.get("mutual_information")
            information = None if information is None else information.float().cpu()
            self.batches.append((outputs["probs"].detach().float().cpu(), outputs["target"].cpu(), information))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.batches:
            return
        probs, target, information = zip(*self.batches, strict=True)
        self.batches = []
        samples = getattr(pl_module, "mc_samples", 1)
        label = loop_label(samples)
        self.results[label] = (torch.cat(probs), torch.cat(target))
        if information[0] is not None:
            self.information[label] = torch.cat(information)
        if samples != pl_module.hparams.get("mc_samples", 1):
            return  # the deterministic loop of run_test: the MC loop follows, draw both after it
        (results, information), self.results, self.information = (self.results, self.information), {}, {}
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            writer = trainer.logger.experiment
            writer.add_figure("test/reliability_diagram", reliability_diagram(results), trainer.global_step)
            writer.add_figure("test/entropy_right_vs_wrong", entropy_histograms(results), trainer.global_step)
            writer.add_figure("test/risk_coverage", risk_coverage_curves(results, information), trainer.global_step)


def loop_label(mc_samples: int) -> str:
    """The name of a test loop in figures: ``deterministic`` or ``MC dropout, N = 30``."""
    return "deterministic" if mc_samples == 1 else f"MC dropout, N = {mc_samples}"


def reliability_diagram(results: dict[str, tuple[Tensor, Tensor]]):
    """Accuracy against confidence in ``ECE_BINS`` equal bins, one line per set of predictions."""
    from matplotlib.figure import Figure  # imported on use: matplotlib takes a second to import

    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    edges = torch.linspace(0, 1, ECE_BINS + 1)
    for label, (probs, target) in results.items():
        confidence, prediction = probs.max(dim=-1)
        bins = torch.bucketize(confidence, edges[1:-1])
        filled = [b for b in range(ECE_BINS) if (bins == b).any()]
        mean_confidence = [confidence[bins == b].mean().item() for b in filled]
        accuracy = [(prediction == target)[bins == b].float().mean().item() for b in filled]
        axes.plot(mean_confidence, accuracy, marker="o", label=label)
    axes.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    axes.set_title("reliability diagram (15 bins)")
    axes.legend()
    return figure


def entropy_histograms(results: dict[str, tuple[Tensor, Tensor]]):
    """The predictive entropy of right and of wrong predictions, one panel per set of predictions."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * len(results), 4))
    panels = figure.subplots(1, len(results), squeeze=False)[0]
    for axes, (label, (probs, target)) in zip(panels, results.items(), strict=True):
        right = probs.argmax(dim=-1) == target
        values = entropy(probs)
        bins = torch.linspace(0, max(values.max().item(), 1e-3), 31).numpy()
        axes.hist(values[right].numpy(), bins=bins, alpha=0.6, density=True, label=f"right ({int(right.sum())})")
        axes.hist(values[~right].numpy(), bins=bins, alpha=0.6, density=True, label=f"wrong ({int((~right).sum())})")
        axes.set(xlabel="predictive entropy (nats)", ylabel="density", title=label)
        axes.legend()
    return figure


def risk_coverage_curves(results: dict[str, tuple[Tensor, Tensor]], information: dict[str, Tensor]):
    """The error rate of the answers kept against the share kept, ranked by the top probability (and by the
    mutual information where there is one): one line per loop and ranking, AURC in the legend."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    curves = [(label, probs.max(dim=-1).values, probs, target) for label, (probs, target) in results.items()]
    curves += [(f"{label}, by mutual information", -mi, *results[label]) for label, mi in information.items()]
    for label, confidence, probs, target in curves:
        coverage, risk = risk_coverage(confidence, probs.argmax(dim=-1) != target)
        axes.plot(coverage.numpy(), risk.numpy(), label=f"{label} (AURC {risk.mean():.4f})")
    axes.axvline(COVERAGE, color="grey", linestyle=":", label=f"{COVERAGE:.0%} coverage")
    axes.set(xlabel="coverage (share of test images answered, most confident first)", ylabel="risk (error rate)")
    axes.set(xlim=(0, 1), ylim=(0, None), title="abstaining on the least confident images")
    axes.legend()
    return figure


def score_histogram(inside: Tensor, outside: Tensor, name: str, title: str, outside_label: str = "out of distribution"):
    """The score ``name`` of the in-distribution test images against the out-of-distribution ones."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4))
    axes = figure.subplots()
    values = torch.cat([inside, outside])
    bins = torch.linspace(values.min().item(), max(values.max().item(), values.min().item() + 1e-3), 31).numpy()
    axes.hist(inside.numpy(), bins=bins, alpha=0.6, density=True, label=f"test set ({len(inside)})")
    axes.hist(outside.numpy(), bins=bins, alpha=0.6, density=True, label=f"{outside_label} ({len(outside)})")
    # Logarithmic: most images of both sets pile up in one bin (max_prob 1, entropy 0), the tails tell them apart.
    axes.set(xlabel=name.replace("_", " "), ylabel="density (log scale)", yscale="log", title=title)
    axes.legend()
    return figure
