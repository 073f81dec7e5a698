"""Out-of-distribution detection in ``test``: do the uncertainty scores tell foreign images from the test set?

    python train.py test --ckpt_path=RUN/checkpoints/last.ckpt --model.mc_samples=30 --ood_data=FashionMNISTDataModule

Every test loop (deterministic, then MC dropout) scores the OOD DataModule's test images with the same passes
as the in-distribution ones, and logs for each score ``ood/auroc_<score>``, ``ood/aupr_<score>`` and
``ood/fpr95_<score>`` (``ood_mc/...`` for the MC loop, where ``mutual_information`` joins ``max_prob`` and
``entropy``), with a histogram of the score on both sets in the Images tab. The OOD images are the positives:

- AUROC: the chance that a random OOD image scores as more foreign than a random test image (1 perfect, 0.5 chance);
- AUPR: the average precision of flagging OOD images (the share of OOD images in the data is its chance level);
- FPR95: the share of test images flagged at the threshold that flags 95 % of the OOD images (lower is better).

All three come from torchmetrics. The OOD images are normalized as the checkpoint's training data was, not with
their own DataModule's statistics: the network sees them as it would see them in use.
"""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc

from dropout_lab.uncertainty import loop_label, prediction_scores, score_histogram

# The scores, each with the sign that makes a higher value mean "more likely out of distribution".
SCORES = {"max_prob": -1.0, "entropy": 1.0, "mutual_information": 1.0}
TPR = 0.95  # FPR95's true-positive rate


def detection_metrics(inside: Tensor, outside: Tensor) -> dict[str, Tensor]:
    """AUROC, AUPR and FPR95 of a score that is higher for ``outside`` (OOD) images than for ``inside`` ones."""
    scores = torch.cat([inside, outside]).float()
    is_ood = torch.cat([torch.zeros(len(inside)), torch.ones(len(outside))]).long()
    fpr, tpr, _ = binary_roc(scores, is_ood)  # one point per distinct score: tied images are flagged together
    # The first point of the curve (in rising order) that flags 95 %; the margin absorbs float32's rounding of k/n.
    fpr95 = fpr[tpr >= TPR - 1e-6][0]
    return {"auroc": binary_auroc(scores, is_ood), "aupr": binary_average_precision(scores, is_ood), "fpr95": fpr95}


def ood_test_loader(
    datamodule: L.LightningDataModule, normalization: dict[str, list[float]], input_shape: tuple[int, ...]
) -> DataLoader:
    """``--ood_data``'s test images (its predict images if it has no test split, as ImageFilesDataModule),
    normalized with ``normalization``; a ValueError of one line if they are none or not of ``input_shape``."""
    name = type(datamodule).__name__
    if hasattr(datamodule, "mean") and hasattr(datamodule, "std"):  # read by its setup() and dataloaders
        datamodule.mean, datamodule.std = tuple(normalization["mean"]), tuple(normalization["std"])
    datamodule.prepare_data()
    datamodule.setup("test")
    has_test = is_overridden("test_dataloader", datamodule, L.LightningDataModule)
    loader = datamodule.test_dataloader() if has_test else datamodule.predict_dataloader()
    first = next(iter(loader), None)
    if first is None or len(first[0]) == 0:
        raise ValueError(f"--ood_data={name} has no images to score: give it a set with at least one image.")
    shape = tuple(first[0].shape[1:])
    if shape != tuple(input_shape):
        raise ValueError(
            f"--ood_data={name} gives images of shape {shape}, but the checkpoint's model takes {tuple(input_shape)}: "
            "choose a set of the training data's shape (for an MNIST model: --ood_data=FashionMNISTDataModule)."
        )
    return loader


class OODDetection(L.Callback):
    """After each test loop, score ``loader``'s images as that loop scored the test images, and log the detection.

    The OOD images are scored inside the loop's last hook, so in its own state: eval mode, the dropout layers on
    for MC dropout, no gradients. Under DDP every process scores all OOD images against its share of the test set.
    """

    def __init__(self, loader: DataLoader, name: str = "out of distribution") -> None:
        self.loader, self.name = loader, name
        self.inside: list[dict[str, Tensor]] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.inside.append({name: outputs[name].float().cpu() for name in SCORES if name in outputs})

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        inside, self.inside = concatenated(self.inside), []
        outside = concatenated(
            [prediction_scores(pl_module.sample_probs(batch[0].to(pl_module.device))) for batch in self.loader]
        )
        prefix = "ood/" if pl_module.mc_samples == 1 else "ood_mc/"
        writer = trainer.logger.experiment if isinstance(trainer.logger, TensorBoardLogger) else None
        for name in inside:  # mutual_information only under MC dropout
            sign = SCORES[name]
            metrics = detection_metrics(sign * inside[name], sign * outside[name].cpu())
            pl_module.log_dict({f"{prefix}{metric}_{name}": value for metric, value in metrics.items()})
            if writer is not None and trainer.is_global_zero:
                title = f"{loop_label(pl_module.mc_samples)}: AUROC {metrics['auroc']:.3f}"
                figure = score_histogram(inside[name], outside[name].cpu(), name, title, self.name)
                writer.add_figure(f"{prefix}histogram_{name}", figure, trainer.global_step)


def concatenated(batches: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """One tensor per key of a list of batches' dicts."""
    return {name: torch.cat([batch[name] for batch in batches]) for name in batches[0]}
