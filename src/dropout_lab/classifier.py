"""LightningModules: what a training, validation and test step of a classifier does.

There is no ``.train()``/``.eval()`` call and no ``training=`` flag in a step: Lightning puts the
network in eval mode around every validation, test and predict loop (and the sanity check)
and restores train mode afterwards, and CustomDropout follows ``self.training``. The one
exception is Monte Carlo dropout (``mc_samples`` > 1): the test and predict loops' own hooks
put the dropout layers, and only those, back in training mode; the loops restore every mode.

Two ways to change the rates while training (docs/learned_dropout.md): ``learn_dropout`` learns them
(ConcreteDropout, with its regularizer added to the training loss); ``dropout_schedule`` early or late
sets them from the trainer's position in the run. ``dropout/p/<layer>`` logs where they are.
"""

import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from dropout_lab.checkpointing import seed_dropout_stream
from dropout_lab.dropout import ConcreteDropout, CustomDropout, regularizer_weights
from dropout_lab.nets import CNN, MLP, concrete_dropout_and_next_layer, dropout_roles
from dropout_lab.uncertainty import calibration_metrics, prediction_scores, update_calibration


def stage_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Mean loss and accuracy over an epoch, reduced across processes under DDP."""
    # Metric objects keep sums and counts, so the epoch value is exact however the data is
    # split into batches or across ranks (a mean of per-rank means would not be).
    return MetricCollection(
        {"loss": MeanMetric(), "acc": MulticlassAccuracy(num_classes, average="micro")},
        prefix=prefix,
        compute_groups=False,
    )


Schedule = Literal["constant", "early", "late"]
Ramp = Literal["constant", "linear"]
# The learned rates' own AdamW learning rate. Adam moves a parameter by about its learning rate per step
# whatever the gradient, so at the weights' 1e-3 a rate's logit moves at most about 0.5 in the default run's
# 945 steps, and rates started at 0.1 and 0.7 stay near their starts; at DROPOUT_LR they meet
# (docs/learned_dropout.md, measured).
DROPOUT_LR = 0.03


class Classifier(L.LightningModule):
    """Cross-entropy training and evaluation shared by MLPClassifier and CNNClassifier.

    Subclasses build ``self.net`` and call ``save_hyperparameters()``; the optimizer settings
    have defaults here, so a subclass passes them on only if it offers them as arguments.

    Args:
        num_classes: number of classes; set from the DataModule by train.py.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        cosine: anneal the learning rate to 0 along a cosine over the whole run.
        mc_samples: forward passes per image in test and predict; above 1, Monte Carlo dropout.
        learn_dropout: the subclass built its net with ConcreteDropout layers; their regularizer joins the loss.
        dropout_lr: AdamW learning rate of the learned rates' logits (they follow the same cosine).
        weight_regularizer: wr, see ConcreteDropout.regularizer; None: from the training set's size.
        dropout_regularizer: dr, see ConcreteDropout.regularizer; None: from the training set's size.
        dropout_schedule: constant, early or late (see scheduled_p); acts on the CustomDropout layers.
        dropout_cutoff_epoch: where an early or late schedule switches, in epochs.
        dropout_ramp: constant or linear (early only), see scheduled_p.
    """

    def __init__(
        self,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine: bool = True,
        mc_samples: int = 1,
        *,
        learn_dropout: bool = False,
        dropout_lr: float = DROPOUT_LR,
        weight_regularizer: float | None = None,
        dropout_regularizer: float | None = None,
        dropout_schedule: Schedule = "constant",
        dropout_cutoff_epoch: int | None = None,
        dropout_ramp: Ramp = "constant",
    ) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.cosine = lr, weight_decay, cosine
        self.learn_dropout = learn_dropout
        self.dropout_lr = check_dropout_lr(dropout_lr)
        self.weight_regularizer = check_regularizer(weight_regularizer, "weight_regularizer")
        self.dropout_regularizer = check_regularizer(dropout_regularizer, "dropout_regularizer")
        # (wr, dr) of the loss: a None is derived from the training set's size when a fit starts.
        self.regularizer_weights = (self.weight_regularizer, self.dropout_regularizer)
        check_schedule(dropout_schedule, dropout_cutoff_epoch, dropout_ramp, learn_dropout)
        self.dropout_schedule, self.dropout_ramp = dropout_schedule, dropout_ramp
        self.dropout_cutoff_epoch = dropout_cutoff_epoch
        self.set_rates: dict[str, float] = {}  # a schedule's full rate per CustomDropout layer, from setup
        self.planned_steps: float | None = None  # the cosine's length, from configure_optimizers
        self.checkpoint_planned_steps: float | None = None  # the length planned by a resumed run
        # Attribute names, not ModuleDict keys: a key "train" would shadow nn.Module.train.
        self.val_metrics = stage_metrics(num_classes, "val/")
        self.train_eval_metrics = stage_metrics(num_classes, "train_eval/")
        self.test_loss = MeanMetric()
        self.test_metrics = calibration_metrics(num_classes, "test/")
        self.test_mc_metrics = calibration_metrics(num_classes, "test_mc/", mutual_information=True)
        # Passes per image of the next test or predict loop; run_test (cli.py) sets 1 for its deterministic loop.
        self.mc_samples = check_mc_samples(mc_samples)
        # The inputs' normalization (mean, std per channel), from the DataModule; kept in checkpoints.
        self.normalization: dict[str, list[float]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "mean") and hasattr(datamodule, "std"):
            self.normalization = {"mean": list(datamodule.mean), "std": list(datamodule.std)}
        # Under DDP every rank starts from the same seed, which would make every rank draw the
        # same dropout masks. Give each rank its own stream here, after Lightning's own per-rank
        # re-seeding and after the weights were built, so the initial weights stay identical.
        if self.trainer.world_size > 1:
            seed_dropout_stream(torch.initial_seed(), self.global_rank)
        if stage == "fit":
            self.check_dropout_cutoff(self.trainer.max_epochs)
            # Once: a second fit in this process starts from the set rates, not the last scheduled ones.
            self.set_rates = self.set_rates or {
                name: layer.p for name, layer in dropout_layers(self.net).items() if isinstance(layer, CustomDropout)
            }

    def check_dropout_cutoff(self, max_epochs: int | None) -> None:
        """Refuse an early or late schedule whose cutoff is at or beyond the run's end: it would never switch.

        Called by the CLI before anything is written, and by ``setup`` for runs started from Python.
        """
        cutoff = self.dropout_cutoff_epoch
        if self.dropout_schedule != "constant" and max_epochs not in (None, -1) and cutoff >= max_epochs:
            raise ValueError(
                f"dropout_cutoff_epoch={cutoff} is not before max_epochs={max_epochs}: the {self.dropout_schedule} "
                f"schedule would never switch. Use a cutoff from 1 to {max_epochs - 1}, or more epochs."
            )

    def on_train_batch_start(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.dropout_schedule == "constant":
            return
        # The position in the run, in epochs, from the trainer alone: a resumed run, whose trainer
        # restores epoch and batch, continues the schedule exactly, with no state of ours to save.
        epoch = self.trainer.current_epoch + batch_idx / self.trainer.num_training_batches
        layers = dropout_layers(self.net)
        for name, p in self.set_rates.items():
            layers[name].p = scheduled_p(p, self.dropout_schedule, self.dropout_cutoff_epoch, self.dropout_ramp, epoch)

    def on_train_end(self) -> None:
        # The schedule is for training: test and predict (MC dropout) use the set rates, as a model loaded
        # from a checkpoint does (a CustomDropout's p is an argument, not part of the state_dict).
        layers = dropout_layers(self.net)
        for name, p in self.set_rates.items():
            layers[name].p = p

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn != TrainerFn.FITTING:  # validate: no HParams session, no new rates
            return
        # Where the rates are: learned, scheduled (the last training step's), or fixed (a flat line).
        rates = {f"dropout/p/{name}": p for name, p in dropout_rates(self.net).items()}
        learned = {f"hp/p_{name}": p for name, p in self.learned_rates().items()}  # the HParams columns
        # Every rank holds the same rates (DDP averages p's gradients): the mean over ranks changes nothing.
        self.log_dict(rates | learned, sync_dist=True)

    def learned_rates(self) -> dict[str, float]:
        """The drop probability of each ConcreteDropout layer by its role (nets.dropout_roles); empty if none."""
        layers, roles = dropout_layers(self.net).items(), dropout_roles(self.net)
        return {roles[name]: layer.p.item() for name, layer in layers if isinstance(layer, ConcreteDropout)}

    def concrete_regularizer(self) -> Tensor:
        """The sum of every ConcreteDropout layer's regularizer, on the layer that takes its output."""
        pairs = concrete_dropout_and_next_layer(self.net)
        wr, dr = self.regularizer_weights
        return sum(layer.regularizer(nxt, wr, dr) for _, layer, nxt in pairs)

    def derive_regularizer_weights(self) -> None:
        """wr and dr for this fit: the arguments, or what the training set's size gives where they are None."""
        if not self.learn_dropout:
            return
        if self.weight_regularizer is not None and self.dropout_regularizer is not None:
            self.regularizer_weights = (self.weight_regularizer, self.dropout_regularizer)
            return
        try:  # the whole training set (under DDP too: each rank's sampler takes its share of the same dataset)
            n = len(self.trainer.train_dataloader.dataset)
        except (AttributeError, TypeError):
            raise ValueError(
                "learn_dropout weighs its regularizer by the number of training examples, which this training data "
                "does not tell (no len()): give --model.weight_regularizer and --model.dropout_regularizer."
            ) from None
        wr, dr = regularizer_weights(n)
        self.regularizer_weights = (
            wr if self.weight_regularizer is None else self.weight_regularizer,
            dr if self.dropout_regularizer is None else self.dropout_regularizer,
        )
        rank_zero_info(
            f"Concrete dropout's regularizer for N={n} training images: weight_regularizer="
            f"{self.regularizer_weights[0]:.3g}, dropout_regularizer={self.regularizer_weights[1]:.3g}."
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits, loss = self._logits_and_loss(batch)
        # Concrete dropout's loss is the data's plus the regularizer; without it the rates would go to 0.
        regularizer = self.concrete_regularizer() if self.learn_dropout else None
        # Lightning writes step values every log_every_n_steps steps, and each self.log call costs
        # about 0.4 ms (a Metric update per key): for a small model, a tenth of its step. Log on
        # the steps that are written (Lightning's own test, global_step counting the steps done).
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            # The batch's own values, measured with dropout on while the weights move.
            accuracy = (logits.argmax(dim=-1) == batch[1]).float().mean()
            metrics = {"train/loss": loss.detach(), "train/acc": accuracy}
            self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True)
            if regularizer is not None:
                self.log("train/regularizer", regularizer.detach(), on_step=True, on_epoch=False)
        return loss if regularizer is None else loss + regularizer

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        # The DataModule's second validation loader, if any, is a subset of the training data:
        # evaluated by the same code in eval mode, it is the honest "training" side of the gap.
        self._evaluate(batch, self.val_metrics if dataloader_idx == 0 else self.train_eval_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        if self.mc_samples == 1:
            logits = self(x)
            self.test_loss.update(F.cross_entropy(logits, y), weight=len(y))
            self.log("test/loss", self.test_loss, on_epoch=True)
            samples, metrics = logits.softmax(dim=-1).unsqueeze(0), self.test_metrics
        else:
            samples, metrics = self.sample_probs(x), self.test_mc_metrics
        scores = prediction_scores(samples)  # as predict_step's: the CSV and the test cannot disagree
        update_calibration(metrics, scores["probs"], y, scores.get("mutual_information"))
        self.log_dict(metrics, on_epoch=True)
        return {**scores, "target": y}  # for UncertaintyFigures and OODDetection

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        out = prediction_scores(self.sample_probs(batch[0]))
        if len(batch) > 1:  # labelled data; image files have none
            out["target"] = batch[1]
        return out

    def sample_probs(self, x: Tensor) -> Tensor:
        """The softmax of ``mc_samples`` forward passes, shape (passes, batch, classes)."""
        # One pass per iteration. One forward of the batch repeated mc_samples times was measured
        # (benchmarks/mc_dropout.py, CPU): 1.6 to 1.8 times slower for the CNN, 5 to 15 % faster for the MLP.
        return torch.stack([self(x).softmax(dim=-1) for _ in range(self.mc_samples)])

    # Monte Carlo dropout. The test and predict loops put every module in eval mode through these
    # hooks (Lightning #21410), which would silently turn MC dropout into mc_samples equal passes;
    # the loops capture every module's mode before and write it back after.
    def on_test_model_eval(self) -> None:
        super().on_test_model_eval()
        if self.mc_samples > 1:
            dropout_layers_on(self)

    def on_predict_model_eval(self) -> None:
        super().on_predict_model_eval()
        if self.mc_samples > 1:
            dropout_layers_on(self)

    @torch.inference_mode()
    def predict_proba(self, images: Tensor, mc_samples: int | None = None) -> Tensor:
        """Class probabilities (N, classes) of uint8 images (N, C, H, W) or (N, H, W), on the model's device.

        The images are normalized as in training (the statistics come from the checkpoint) and the
        network is in eval mode; with ``mc_samples`` > 1 (default: the model's), the mean of that many
        passes with the dropout layers on. Every module's mode is restored afterwards.
        """
        if self.normalization is None:
            raise ValueError(
                "predict_proba needs the normalization of the training data, which this model does not have: "
                "load it from a checkpoint written by train.py, or set model.normalization = {'mean': [...], "
                "'std': [...]}."
            )
        if images.dtype != torch.uint8:
            raise ValueError(f"predict_proba takes uint8 images (0-255), got {images.dtype}")
        images = images.unsqueeze(1) if images.dim() == 3 else images
        mean = torch.tensor(self.normalization["mean"], device=self.device).view(-1, 1, 1)
        std = torch.tensor(self.normalization["std"], device=self.device).view(-1, 1, 1)
        x = (images.to(self.device).float() / 255 - mean) / std
        modes = {module: module.training for module in self.modules()}
        passes, self.mc_samples = (
            self.mc_samples,
            check_mc_samples(self.mc_samples if mc_samples is None else mc_samples),
        )
        try:
            # What the predict loop does, outside a Trainer: eval mode, then the MC dropout hook's choice.
            self.eval()
            if self.mc_samples > 1:
                dropout_layers_on(self)
            return self.sample_probs(x).mean(dim=0)
        finally:
            self.mc_samples = passes
            for module, training in modes.items():
                module.training = training  # as Lightning's loops restore modes: no train() call

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
        # A learned rate is no weight: decay would pull every p_logit to 0 (p to 0.5) whatever the data says.
        rates = [param for name, param in self.named_parameters() if name.endswith("p_logit")]
        weights = [param for name, param in self.named_parameters() if not name.endswith("p_logit")]
        learned = {"params": rates, "weight_decay": 0.0, "lr": self.dropout_lr}  # Adam would move them too slowly
        groups = [{"params": weights}, learned] if rates else weights
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
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
        if self.normalization is not None:  # for predicting on new images (load_classifier, ImageFilesDataModule)
            checkpoint["normalization"] = self.normalization

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.checkpoint_planned_steps = checkpoint.get("planned_steps")
        self.normalization = checkpoint.get("normalization", self.normalization)

    def on_train_start(self) -> None:
        self.derive_regularizer_weights()  # the training loader is built by now, so its dataset's size is known
        if self.global_step == 0:
            # Where every rate begins: validation logs them from the end of the first epoch on.
            for logger in self.loggers:
                logger.log_metrics({f"dropout/p/{name}": p for name, p in dropout_rates(self.net).items()}, step=0)
        self.replan_cosine()

    def replan_cosine(self) -> None:
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


def scheduled_p(p: float, schedule: Schedule, cutoff: int | None, ramp: Ramp, epoch: float) -> float:
    """The drop probability at ``epoch`` (fractional) of a layer set to ``p`` (Liu et al., ICML 2023).

    constant: p throughout. early: p until the cutoff epoch, then 0 (ramp linear: from p down to 0 along a
    line that reaches 0 at the cutoff). late: 0 until the cutoff epoch, then p.
    """
    if schedule == "constant":
        return p
    if schedule == "late":
        return p if epoch >= cutoff else 0.0
    if epoch >= cutoff:
        return 0.0
    return p * (1 - epoch / cutoff) if ramp == "linear" else p


def check_schedule(schedule: str, cutoff: int | None, ramp: str, learn_dropout: bool) -> None:
    if schedule not in ("constant", "early", "late"):
        raise ValueError(f"dropout_schedule must be constant, early or late, got {schedule!r}")
    if ramp not in ("constant", "linear"):
        raise ValueError(f"dropout_ramp must be constant or linear, got {ramp!r}")
    if schedule == "constant":
        if cutoff is not None or ramp != "constant":
            raise ValueError(
                "dropout_cutoff_epoch and dropout_ramp shape an early or late schedule: set dropout_schedule=early "
                "or late, or leave them out."
            )
        return
    if learn_dropout:
        raise ValueError(
            f"dropout_schedule={schedule} sets the rates by epoch and learn_dropout=true learns them: choose one."
        )
    # At 0 the schedule would switch before the first step: early would be no dropout, late constant dropout.
    if isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 1:
        raise ValueError(
            f"dropout_schedule={schedule} needs dropout_cutoff_epoch, the epoch (an integer >= 1) at which dropout "
            f"switches {'off' if schedule == 'early' else 'on'}; got {cutoff!r}."
        )
    if schedule == "late" and ramp == "linear":
        raise ValueError(
            "dropout_ramp=linear ramps early dropout down to the cutoff; late dropout switches on at once."
        )


def check_regularizer(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"{name} weighs a term of the loss and must be >= 0, got {value!r} (0 turns the term off; leave it "
            "out to derive it from the number of training images)."
        )
    return float(value)


def check_dropout_lr(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"dropout_lr is the learned rates' learning rate and must be > 0, got {value!r}: use "
            f"--model.dropout_lr={DROPOUT_LR} (the default), or --model.learn_dropout=false to keep the rates fixed."
        )
    return float(value)


def check_mc_samples(mc_samples: int) -> int:
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(
            f"mc_samples is the number of forward passes per image and must be an integer >= 1, got {mc_samples!r}. "
            "Use 1 for the deterministic eval-mode pass, 10 to 30 for Monte Carlo dropout."
        )
    return mc_samples


def dropout_layers(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The CustomDropout(2d) and ConcreteDropout(2d) layers in ``module``, by name."""
    # The 2d layers are subclasses of the others.
    return {name: m for name, m in module.named_modules() if isinstance(m, (CustomDropout, ConcreteDropout))}


def dropout_rates(module: torch.nn.Module) -> dict[str, float]:
    """The drop probability of every dropout layer in ``module`` now (set, scheduled or learned), by its role:
    input, hidden1, ..., conv1, ..., head (nets.dropout_roles), the ``<layer>`` of ``dropout/p/<layer>``."""
    roles = dropout_roles(module)
    layers = dropout_layers(module).items()
    return {roles[name]: layer.p.item() if isinstance(layer, ConcreteDropout) else layer.p for name, layer in layers}


def dropout_layers_on(model: torch.nn.Module) -> None:
    """Put the dropout layers of ``model`` (CustomDropout, ConcreteDropout, their 2d versions) in training mode."""
    for module in dropout_layers(model).values():
        module.train()


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
        mc_samples: forward passes per image in test and predict; above 1, Monte Carlo dropout (the mean
            of that many passes with the dropout layers on). 1: the deterministic eval-mode pass.
        learn_dropout: learn every dropout rate (Concrete dropout), from the rates above (each then 0 < p < 1).
        concrete_temperature: with learn_dropout, the temperature of the relaxed drop masks (> 0; the paper's 0.1).
        dropout_lr: with learn_dropout, the rates' own AdamW learning rate (the weights' lr is too slow for them).
        weight_regularizer: with learn_dropout, wr in the loss's wr·Σθ²/(1−p) over the layer after each dropout;
            None: l²/(2N) for the N training images (see regularizer_weights).
        dropout_regularizer: with learn_dropout, dr in the loss's dr·K·(p log p + (1−p) log(1−p)); None: 1/N.
        dropout_schedule: constant rates; early: the rates until dropout_cutoff_epoch, then 0; late: 0, then the rates.
        dropout_cutoff_epoch: the epoch at which an early or late schedule switches (1 to max_epochs - 1).
        dropout_ramp: early schedule only; constant: the rates until the cutoff; linear: down to 0 at the cutoff.
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
        mc_samples: int = 1,
        learn_dropout: bool = False,
        concrete_temperature: float = 0.1,
        dropout_lr: float = DROPOUT_LR,
        weight_regularizer: float | None = None,
        dropout_regularizer: float | None = None,
        dropout_schedule: Schedule = "constant",
        dropout_cutoff_epoch: int | None = None,
        dropout_ramp: Ramp = "constant",
    ) -> None:
        super().__init__(
            num_classes,
            lr,
            weight_decay,
            cosine,
            mc_samples,
            learn_dropout=learn_dropout,
            dropout_lr=dropout_lr,
            weight_regularizer=weight_regularizer,
            dropout_regularizer=dropout_regularizer,
            dropout_schedule=dropout_schedule,
            dropout_cutoff_epoch=dropout_cutoff_epoch,
            dropout_ramp=dropout_ramp,
        )
        self.save_hyperparameters(logger=False)  # TensorBoardLayout logs them, with metrics
        self.net = MLP(input_shape, num_classes, hidden, dropout, input_dropout, learn_dropout, concrete_temperature)
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
        batch_norm: BatchNorm2d after every conv. Like dropout it acts by training and eval mode:
            batch statistics in training, running averages in evaluation.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay; 0 isolates the effect of dropout.
        cosine: anneal the learning rate to 0 along a cosine over the whole run.
        compile: compile the network with torch.compile (the first steps are slower while it compiles).
        mc_samples: forward passes per image in test and predict; above 1, Monte Carlo dropout (the mean
            of that many passes with the dropout layers on). 1: the deterministic eval-mode pass.
        learn_dropout: learn every dropout rate (Concrete dropout), from the rates above (each then 0 < p < 1).
        concrete_temperature: with learn_dropout, the temperature of the relaxed drop masks (> 0; the paper's 0.1).
        dropout_lr: with learn_dropout, the rates' own AdamW learning rate (the weights' lr is too slow for them).
        weight_regularizer: with learn_dropout, wr in the loss's wr·Σθ²/(1−p) over the layer after each dropout;
            None: l²/(2N) for the N training images (see regularizer_weights).
        dropout_regularizer: with learn_dropout, dr in the loss's dr·K·(p log p + (1−p) log(1−p)); None: 1/N.
        dropout_schedule: constant rates; early: the rates until dropout_cutoff_epoch, then 0; late: 0, then the rates.
        dropout_cutoff_epoch: the epoch at which an early or late schedule switches (1 to max_epochs - 1).
        dropout_ramp: early schedule only; constant: the rates until the cutoff; linear: down to 0 at the cutoff.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
        dropout: float = 0.5,
        conv_dropout: float = 0.1,
        batch_norm: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine: bool = True,
        compile: bool = False,
        mc_samples: int = 1,
        learn_dropout: bool = False,
        concrete_temperature: float = 0.1,
        dropout_lr: float = DROPOUT_LR,
        weight_regularizer: float | None = None,
        dropout_regularizer: float | None = None,
        dropout_schedule: Schedule = "constant",
        dropout_cutoff_epoch: int | None = None,
        dropout_ramp: Ramp = "constant",
    ) -> None:
        super().__init__(
            num_classes,
            lr,
            weight_decay,
            cosine,
            mc_samples,
            learn_dropout=learn_dropout,
            dropout_lr=dropout_lr,
            weight_regularizer=weight_regularizer,
            dropout_regularizer=dropout_regularizer,
            dropout_schedule=dropout_schedule,
            dropout_cutoff_epoch=dropout_cutoff_epoch,
            dropout_ramp=dropout_ramp,
        )
        self.save_hyperparameters(logger=False)  # TensorBoardLayout logs them, with metrics
        self.net = CNN(
            input_shape,
            num_classes,
            channels,
            hidden,
            dropout,
            conv_dropout,
            batch_norm,
            learn_dropout,
            concrete_temperature,
        )
        if compile:
            self.net.compile()  # in place: the state_dict keys, hence checkpoints, stay those of the plain net
