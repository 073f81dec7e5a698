"""How sure a classifier is, and whether it is right to be: scores of predicted probabilities.

- ``entropy`` and ``mutual_information``: the uncertainty of one prediction. With Monte Carlo
  dropout (several passes with the dropout layers on), the entropy of the mean prediction splits
  into the mean entropy of the passes (noise in the data) and the mutual information (the part
  that comes from not knowing the weights: the passes disagree).
- ``calibration_metrics``: accuracy, NLL, ECE and Brier score over a test epoch, as torchmetrics
  objects, so that the values are exact across batches and processes.
- ``UncertaintyFigures``: a reliability diagram and the entropy of right and wrong predictions,
  drawn with matplotlib into TensorBoard after testing.
"""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

ECE_BINS = 15


def entropy(probs: Tensor) -> Tensor:
    """Entropy in nats of each distribution along the last dimension (0 log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def mutual_information(samples: Tensor) -> Tensor:
    """Entropy of the mean minus the mean entropy of ``samples`` (passes, batch, classes): 0 when they agree."""
    # Clamped: rounding can make it a hair below zero when all passes are equal.
    return (entropy(samples.mean(dim=0)) - entropy(samples).mean(dim=0)).clamp_min(0.0)


def calibration_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Accuracy, negative log-likelihood, expected calibration error (15 bins) and Brier score of probabilities."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "nll": MeanMetric(),
            "ece": MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1"),
            "brier": MeanMetric(),
        },
        prefix=prefix,
        compute_groups=False,
    )


def update_calibration(metrics: MetricCollection, probs: Tensor, target: Tensor) -> None:
    """Add a batch of predicted probabilities (batch, classes) and true classes to ``calibration_metrics``."""
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
        self.batches: list[tuple[Tensor, Tensor]] = []
        self.results: dict[str, tuple[Tensor, Tensor]] = {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and "probs" in outputs:
            self.batches.append((outputs["probs"].detach().float().cpu(), outputs["target"].cpu()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.batches:
            return
        probs, target = (torch.cat(parts) for parts in zip(*self.batches, strict=True))
        self.batches = []
        samples = getattr(pl_module, "mc_samples", 1)
        self.results["deterministic" if samples == 1 else f"MC dropout, N = {samples}"] = (probs, target)
        if samples != pl_module.hparams.get("mc_samples", 1):
            return  # the deterministic loop of run_test: the MC loop follows, draw both after it
        results, self.results = self.results, {}
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            writer = trainer.logger.experiment
            writer.add_figure("test/reliability_diagram", reliability_diagram(results), trainer.global_step)
            writer.add_figure("test/entropy_right_vs_wrong", entropy_histograms(results), trainer.global_step)


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
