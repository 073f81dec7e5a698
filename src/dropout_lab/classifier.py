"""LightningModules: what a training, validation and test step of a classifier does.

There is no ``.train()``/``.eval()`` call and no ``training=`` flag in a step: Lightning puts the
network in eval mode around every validation, test and predict loop (and the sanity check)
and restores train mode afterwards, and CustomDropout follows ``self.training``.

Classifier holds the steps and metrics; each dropout feature lives in the file named after it and is joined
here by a small hook, so a subclass that only builds ``self.net`` gets all of them:
learned rates (learned_rates.py), early and late schedules (dropout_schedule.py), Monte Carlo dropout
(mc_dropout.py) and the cosine learning rate (lr_schedule.py).
"""

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from dropout_lab import learned_rates, lr_schedule, mc_dropout
from dropout_lab.checkpointing import seed_dropout_stream
from dropout_lab.dropout import check_start_p, check_temperature, dropout_rates
from dropout_lab.dropout_schedule import DropoutSchedule, Ramp, Schedule, check_schedule
from dropout_lab.nets import CNN, MLP
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


class Classifier(L.LightningModule):
    """Cross-entropy training and evaluation of ``self.net``, which a subclass builds.

    A subclass declares its own arguments and passes the others on with ``**kwargs``; every one below is then
    one of its flags too (``--model.learn_dropout``), and all are saved in its checkpoints.

    Args:
        num_classes: number of classes; set from the DataModule by train.py.
        input_shape: shape of one input, (channels, height, width); set from the DataModule by train.py.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay; 0 isolates the effect of dropout.
        cosine: anneal the learning rate to 0 along a cosine over the whole run.
        compile: compile the network with torch.compile (the first steps are slower while it compiles).
        mc_samples: forward passes per image in test and predict; above 1, Monte Carlo dropout (the mean
            of that many passes with the dropout layers on). 1: the deterministic eval-mode pass.
        learn_dropout: learn every dropout rate (Concrete dropout), from the rates set (each then 0 < p < 1).
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
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine: bool = True,
        compile: bool = False,
        mc_samples: int = 1,
        learn_dropout: bool = False,
        concrete_temperature: float = 0.1,
        dropout_lr: float = learned_rates.DROPOUT_LR,
        weight_regularizer: float | None = None,
        dropout_regularizer: float | None = None,
        dropout_schedule: Schedule = "constant",
        dropout_cutoff_epoch: int | None = None,
        dropout_ramp: Ramp = "constant",
    ) -> None:
        super().__init__()
        # The arguments of this __init__ and of the subclass's that called it: HParams and checkpoints.
        self.save_hyperparameters(logger=False)  # TensorBoardLayout logs them, with metrics
        self.input_shape, self.lr, self.weight_decay, self.cosine = tuple(input_shape), lr, weight_decay, cosine
        self.compile_net, self.compiled, self.learn_dropout = compile, False, learn_dropout
        self.concrete_temperature = check_temperature(concrete_temperature, "concrete_temperature")
        if learn_dropout:  # every rate argument (named *dropout, as the README asks) starts a learned rate
            for name, value in self.hparams.items():
                if name.endswith("dropout") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    check_start_p(value, name)
        self.dropout_lr = learned_rates.check_dropout_lr(dropout_lr)
        wr = learned_rates.check_regularizer(weight_regularizer, "weight_regularizer")
        dr = learned_rates.check_regularizer(dropout_regularizer, "dropout_regularizer")
        self.regularizer_weights = self.regularizer_arguments = (wr, dr)  # a None: from N when a fit starts
        self.concrete_pairs: learned_rates.Pairs = []  # each learned layer and the one it feeds, configure_model
        check_schedule(dropout_schedule, dropout_cutoff_epoch, dropout_ramp, learn_dropout)
        schedule = dropout_schedule != "constant"
        self.schedule = DropoutSchedule(dropout_schedule, dropout_cutoff_epoch, dropout_ramp) if schedule else None
        self.planned_steps: float | None = None  # the cosine's length, from configure_optimizers
        self.checkpoint_planned_steps: float | None = None  # the length planned by a resumed run
        # Attribute names, not ModuleDict keys: a key "train" would shadow nn.Module.train.
        self.val_metrics = stage_metrics(num_classes, "val/")
        self.train_eval_metrics = stage_metrics(num_classes, "train_eval/")
        self.test_loss = MeanMetric()
        self.test_metrics = calibration_metrics(num_classes, "test/")
        self.test_mc_metrics = calibration_metrics(num_classes, "test_mc/", mutual_information=True)
        # Passes per image of the next test or predict loop; run_test (cli.py) sets 1 for its deterministic loop.
        self.mc_samples = mc_dropout.check_mc_samples(mc_samples)
        # The inputs' normalization (mean, std per channel), from the DataModule; kept in checkpoints.
        self.normalization: dict[str, list[float]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_model(self) -> None:
        # Lightning calls this before every loop and before load_from_checkpoint loads the weights, after the
        # subclass has built self.net: the place to swap in learned rates, whatever the net.
        if self.learn_dropout and not self.concrete_pairs:
            self.concrete_pairs = learned_rates.learn_rates(self.net, self.input_shape, self.concrete_temperature)
        if self.compile_net and not self.compiled:
            self.net.compile()  # in place: the state_dict keys, hence checkpoints, stay those of the plain net
            self.compiled = True

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.schedule] if self.schedule else []

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "mean") and hasattr(datamodule, "std"):
            self.normalization = {"mean": list(datamodule.mean), "std": list(datamodule.std)}
        # Under DDP every rank starts from the same seed, which would make every rank draw the
        # same dropout masks. Give each rank its own stream here, after Lightning's own per-rank
        # re-seeding and after the weights were built, so the initial weights stay identical.
        if self.trainer.world_size > 1:
            seed_dropout_stream(torch.initial_seed(), self.global_rank)

    def on_train_start(self) -> None:
        if self.learn_dropout:  # the training loader is built by now, so its dataset's size is known
            self.regularizer_weights = learned_rates.regularizer_weights_for(self.trainer, *self.regularizer_arguments)
        if self.global_step == 0:
            # Where every rate begins: validation logs them from the end of the first epoch on.
            for logger in self.loggers:
                logger.log_metrics({f"dropout/p/{name}": p for name, p in dropout_rates(self.net).items()}, step=0)
        if self.cosine:  # after the checkpoint is loaded, whichever strategy loads it before or after the optimizer
            lr_schedule.replan(self.lr_schedulers(), self.planned_steps, self.checkpoint_planned_steps)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits, loss = self._logits_and_loss(batch)
        # Concrete dropout's loss is the data's plus the regularizer; without it the rates would go to 0.
        regularizer = (
            learned_rates.concrete_regularizer(self.concrete_pairs, self.regularizer_weights)
            if self.learn_dropout
            else None
        )
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

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn != TrainerFn.FITTING:  # validate: no HParams session, no new rates
            return
        # Where the rates are: learned, scheduled (the last training step's), or fixed (a flat line).
        rates = {f"dropout/p/{name}": p for name, p in dropout_rates(self.net).items()}
        learned = {f"hp/p_{name}": p for name, p in learned_rates.learned_rates(self.net).items()}  # HParams columns
        # Every rank holds the same rates (DDP averages p's gradients): the mean over ranks changes nothing.
        self.log_dict(rates | learned, sync_dist=True)

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
        return mc_dropout.sample_probs(self, x, self.mc_samples)

    def on_test_model_eval(self) -> None:  # Monte Carlo dropout: see mc_dropout.py
        super().on_test_model_eval()
        if self.mc_samples > 1:
            mc_dropout.dropout_layers_on(self)

    def on_predict_model_eval(self) -> None:
        super().on_predict_model_eval()
        if self.mc_samples > 1:
            mc_dropout.dropout_layers_on(self)

    predict_proba = mc_dropout.predict_proba  # model.predict_proba(images): for use outside a Trainer

    def configure_optimizers(self):
        groups = learned_rates.parameter_groups(self, self.dropout_lr)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        if not self.cosine:
            return optimizer
        self.planned_steps = self.trainer.estimated_stepping_batches
        return {"optimizer": optimizer, "lr_scheduler": lr_schedule.cosine_scheduler(optimizer, self.planned_steps)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["planned_steps"] = self.planned_steps
        if self.normalization is not None:  # for predicting on new images (load_classifier, ImageFilesDataModule)
            checkpoint["normalization"] = self.normalization

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.checkpoint_planned_steps = checkpoint.get("planned_steps")
        self.normalization = checkpoint.get("normalization", self.normalization)

    def _logits_and_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return logits, F.cross_entropy(logits, y)

    def _evaluate(self, batch: tuple[Tensor, Tensor], metrics: MetricCollection) -> None:
        logits, loss = self._logits_and_loss(batch)
        metrics.update(value=loss, weight=len(batch[1]), preds=logits, target=batch[1])
        # Lightning computes (and under DDP, reduces) the Metric objects once, at the epoch's end.
        self.log_dict(metrics, on_epoch=True, add_dataloader_idx=False)


class MLPClassifier(Classifier):
    """A multilayer perceptron with CustomDropout on the pixels and after every hidden layer.

    Args:
        input_shape: shape of one input, (channels, height, width); set from the DataModule by train.py.
        num_classes: number of classes; set from the DataModule by train.py.
        hidden: width of each hidden layer.
        dropout: drop probability p after every hidden layer (0.5 in the dropout paper).
        input_dropout: drop probability p of the input pixels (0.2 in the dropout paper).
        **kwargs: Classifier's arguments: the optimizer, MC dropout, learned and scheduled rates.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.5,
        input_dropout: float = 0.2,
        **kwargs,
    ) -> None:
        super().__init__(num_classes, input_shape, **kwargs)
        self.net = MLP(input_shape, num_classes, hidden, dropout, input_dropout)


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
        **kwargs: Classifier's arguments: the optimizer, MC dropout, learned and scheduled rates.
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
        **kwargs,
    ) -> None:
        super().__init__(num_classes, input_shape, **kwargs)
        self.net = CNN(input_shape, num_classes, channels, hidden, dropout, conv_dropout, batch_norm)
