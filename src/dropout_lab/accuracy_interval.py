"""The test set's own noise: a 95 % interval for test/acc, so that a reader sees when two runs are indistinguishable.

500 test digits at 96 % accuracy leave about ±1.7 points of doubt, whatever was averaged over seeds and folds.
``AccuracyInterval`` logs ``test/acc_low`` and ``test/acc_high`` (``test_mc/...`` for MC dropout) beside
test/acc, so they appear in the table ``test`` prints; sweep_summary.py puts the same interval in summary.csv.
"""

import math

import lightning as L
import torch

Z95 = 1.959964  # the standard normal's 97.5 % quantile


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: ``correct`` of ``n`` right, at confidence ``z``.

    Unlike the normal approximation it stays inside 0..1 and is not empty at 100 % accuracy. torchmetrics has
    no confidence intervals for accuracy, hence this one formula.
    """
    if n < 1:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


class AccuracyInterval(L.Callback):
    """Count the test loop's right answers (from test_step's probs and target), log the 95 % interval at its end."""

    def __init__(self) -> None:
        self.correct, self.total = 0, 0
        self.tested = 0  # the last test loop's images, over every rank (for tune.py's summary)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.correct, self.total = 0, 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and "probs" in outputs and "target" in outputs:
            self.correct += int((outputs["probs"].argmax(dim=-1) == outputs["target"]).sum())
            self.total += len(outputs["target"])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Each DDP rank tested its own share of the images: the interval is of all of them.
        counts = torch.tensor([self.correct, self.total], dtype=torch.float32, device=pl_module.device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        if counts[1] < 1:
            return
        self.tested = int(counts[1].item())
        low, high = wilson_interval(counts[0].item(), self.tested)
        prefix = "test/" if getattr(pl_module, "mc_samples", 1) == 1 else "test_mc/"
        pl_module.log_dict({f"{prefix}acc_low": low, f"{prefix}acc_high": high})
