"""LightningModules: what a training, validation and test step of a classifier does.

There is no ``.train()``/``.eval()`` call and no ``training=`` flag here: Lightning puts the
network in eval mode around every validation, test and predict loop (and the sanity check)
and restores train mode afterwards, and CustomDropout follows ``self.training``.
"""

import math
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from dropout_lab.checkpointing import seed_dropout_stream
from dropout_lab.nets import CNN, MLP


def stage_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Mean loss and accuracy over an epoch, reduced across processes under DDP."""
    # Metric objects keep sums and counts, so the epoch value is exact however the data is
    # split into batches or across ranks (a mean of per-rank means would not be).
    return MetricCollection(
        {"loss": MeanMetric(), "acc": MulticlassAccuracy(num_classes, average="micro")},
        prefix=prefix,
        compute_groups=False,
    )


class Classifier(L.LightningModule):
    """Cross-entropy training and evaluation shared by MLPClassifier and CNNClassifier.

    Subclasses build ``self.net`` and call ``save_hyperparameters()``; the optimizer settings
    have defaults here, so a subclass passes them on only if it offers them as arguments.

    Args:
        num_classes: number of classes; set from the DataModule by train.py.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        cosine: anneal the learning rate to 0 along a cosine over the whole run.
    """

    def __init__(self, num_classes: int, lr: float = 1e-3, weight_decay: float = 0.0, cosine: bool = True) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.cosine = lr, weight_decay, cosine
        self.planned_steps: float | None = None  # the cosine's length, from configure_optimizers
        self.checkpoint_planned_steps: float | None = None  # the length planned by a resumed run
        # Attribute names, not ModuleDict keys: a key "train" would shadow nn.Module.train.
        self.val_metrics = stage_metrics(num_classes, "val/")
        self.train_eval_metrics = stage_metrics(num_classes, "train_eval/")
        self.test_metrics = stage_metrics(num_classes, "test/")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        # Under DDP every rank starts from the same seed, which would make every rank draw the
        # same dropout masks. Give each rank its own stream here, after Lightning's own per-rank
        # re-seeding and after the weights were built, so the initial weights stay identical.
        if self.trainer.world_size > 1:
            seed_dropout_stream(torch.initial_seed(), self.global_rank)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits, loss = self._logits_and_loss(batch)
        # Lightning writes step values every log_every_n_steps steps, and each self.log call costs
        # about 0.4 ms (a Metric update per key): for a small model, a tenth of its step. Log on
        # the steps that are written (Lightning's own test, global_step counting the steps done).
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            # The batch's own values, measured with dropout on while the weights move.
            accuracy = (logits.argmax(dim=-1) == batch[1]).float().mean()
            metrics = {"train/loss": loss.detach(), "train/acc": accuracy}
            self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        # The DataModule's second validation loader, if any, is a subset of the training data:
        # evaluated by the same code in eval mode, it is the honest "training" side of the gap.
        self._evaluate(batch, self.val_metrics if dataloader_idx == 0 else self.train_eval_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).softmax(dim=-1)

    def _logits_and_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return logits, F.cross_entropy(logits, y)

    def _evaluate(self, batch: tuple[Tensor, Tensor], metrics: MetricCollection) -> None:
        logits, loss = self._logits_and_loss(batch)
        metrics.update(value=loss, weight=len(batch[1]), preds=logits, target=batch[1])
        # Lightning computes (and under DDP, reduces) the Metric objects once, at the epoch's end.
        self.log_dict(metrics, on_epoch=True, add_dataloader_idx=False)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.cosine:
            return optimizer
        # The schedule is a function of the step and of this run's length, not a state: a resume with a
        # larger max_epochs follows the cosine of the longer run from the step it resumes at. (A
        # CosineAnnealingLR keeps its T_max in the checkpoint, so it would restart a cycle past the old end.)
        self.planned_steps = steps = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["planned_steps"] = self.planned_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.checkpoint_planned_steps = checkpoint.get("planned_steps")

    def on_train_start(self) -> None:
        # After the checkpoint is loaded, whichever strategy loads it before or after configure_optimizers.
        if self.planned_steps is None or self.checkpoint_planned_steps in (None, self.planned_steps):
            return
        # The optimizer's state holds the rate of the old plan for the next step: the new plan's instead.
        scheduler = self.lr_schedulers()
        for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * cosine(scheduler.last_epoch, self.planned_steps)
        rank_zero_info(
            f"The cosine learning-rate schedule was re-planned for {self.planned_steps} steps, the length of "
            f"this run (the checkpoint's run planned {self.checkpoint_planned_steps})."
        )


def cosine(step: int, steps: float) -> float:
    """The learning rate's factor at ``step`` of ``steps``: from 1 down to 0 along half a cosine, then 0."""
    return 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))


class MLPClassifier(Classifier):
    """A multilayer perceptron with CustomDropout after every hidden layer.

    Args:
        input_shape: shape of one input, (channels, height, width); set from the DataModule by train.py.
        num_classes: number of classes; set from the DataModule by train.py.
        hidden: width of each hidden layer.
        dropout: drop probability p after every hidden layer (0.5 in the dropout paper).
        input_dropout: drop probability p of the input pixels (0.2 in the dropout paper).
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay; 0 isolates the effect of dropout.
        cosine: anneal the learning rate to 0 along a cosine over the whole run.
        compile: compile the network with torch.compile (the first steps are slower while it compiles).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.5,
        input_dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(num_classes, lr, weight_decay, cosine)
        self.save_hyperparameters(logger=False)  # TensorBoardLayout logs them, with metrics
        self.net = MLP(input_shape, num_classes, hidden, dropout, input_dropout)
        if compile:
            self.net.compile()  # in place: the state_dict keys, hence checkpoints, stay those of the plain net


class CNNClassifier(Classifier):
    """A convolutional network: conv blocks with CustomDropout2d, a head with CustomDropout.

    Args:
        input_shape: shape of one input, (channels, height, width); set from the DataModule by train.py.
        num_classes: number of classes; set from the DataModule by train.py.
        channels: output channels of each conv block (two 3x3 convs and a 2x2 max-pool).
        hidden: width of the fully connected hidden layer of the head.
        dropout: drop probability p of the head's hidden layer (0.5 in the dropout paper).
        conv_dropout: drop probability p of whole channels after each conv block (kept small:
            conv layers have few parameters and overfit less).
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay; 0 isolates the effect of dropout.
        cosine: anneal the learning rate to 0 along a cosine over the whole run.
        compile: compile the network with torch.compile (the first steps are slower while it compiles).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
        dropout: float = 0.5,
        conv_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(num_classes, lr, weight_decay, cosine)
        self.save_hyperparameters(logger=False)  # TensorBoardLayout logs them, with metrics
        self.net = CNN(input_shape, num_classes, channels, hidden, dropout, conv_dropout)
        if compile:
            self.net.compile()  # in place: the state_dict keys, hence checkpoints, stay those of the plain net
