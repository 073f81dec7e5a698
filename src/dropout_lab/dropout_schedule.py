"""Early and late dropout (Liu et al., ICML 2023): the rates set by the trainer's position in the run.

``DropoutSchedule`` is a Callback, as Lightning's BaseFinetuning and StochasticWeightAveraging are: it changes
training from outside the model's maths, by the loop's position, on whatever CustomDropout layers a
LightningModule has, so any model gets it with no code. Classifier adds it itself (``configure_callbacks``) from
``--model.dropout_schedule``, ``--model.dropout_cutoff_epoch`` and ``--model.dropout_ramp``; another
LightningModule can take it with ``--trainer.callbacks``.
"""

from typing import Literal

import lightning as L

from dropout_lab.dropout import CustomDropout, dropout_layers

Schedule = Literal["constant", "early", "late"]
Ramp = Literal["constant", "linear"]


class DropoutSchedule(L.Callback):
    """Set every CustomDropout(2d) layer's p before each training batch; the set rates again when training ends.

    Args:
        schedule: early: each layer's rate until the cutoff, then 0; late: 0 until the cutoff, then the rate.
        cutoff: the epoch at which the schedule switches (1 to max_epochs - 1).
        ramp: early only; constant: the rates until the cutoff; linear: down to 0 at the cutoff.
    """

    def __init__(self, schedule: Schedule, cutoff: int | None, ramp: Ramp = "constant") -> None:
        check_schedule(schedule, cutoff, ramp, learn_dropout=False)
        self.schedule, self.cutoff, self.ramp = schedule, cutoff, ramp
        self.set_rates: dict[str, float] = {}  # each layer's full rate, from the first setup

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.check_cutoff(trainer.max_epochs)
        # Once: a second fit in this process starts from the set rates, not the last scheduled ones.
        self.set_rates = self.set_rates or {
            name: layer.p for name, layer in dropout_layers(pl_module).items() if isinstance(layer, CustomDropout)
        }

    def check_cutoff(self, max_epochs: int | None) -> None:
        """Refuse a cutoff at or beyond the run's end, where the schedule would never switch.

        Called by setup, and by the CLI before anything is written.
        """
        if self.schedule != "constant" and max_epochs not in (None, -1) and self.cutoff >= max_epochs:
            raise ValueError(
                f"dropout_cutoff_epoch={self.cutoff} is not before max_epochs={max_epochs}: the {self.schedule} "
                f"schedule would never switch. Use a cutoff from 1 to {max_epochs - 1}, or more epochs."
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before the model's own hook logs where every rate begins (dropout/p/* at step 0): a late schedule's 0.
        self.set_layers(pl_module, trainer.current_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # The position in the run, in epochs, from the trainer alone: a resumed run, whose trainer
        # restores epoch and batch, continues the schedule exactly, with no state of ours to save.
        self.set_layers(pl_module, trainer.current_epoch + batch_idx / trainer.num_training_batches)

    def set_layers(self, pl_module: L.LightningModule, epoch: float) -> None:
        layers = dropout_layers(pl_module)
        for name, p in self.set_rates.items():
            layers[name].p = scheduled_p(p, self.schedule, self.cutoff, self.ramp, epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The schedule is for training: test and predict (MC dropout) use the set rates, as a model loaded
        # from a checkpoint does (a CustomDropout's p is an argument, not part of the state_dict).
        layers = dropout_layers(pl_module)
        for name, p in self.set_rates.items():
            layers[name].p = p


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
