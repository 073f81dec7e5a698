"""The generalization gap, measured honestly, and a TensorBoard layout that shows it.

``train/loss`` is measured with dropout on while the weights move, so it is not comparable
with ``val/loss`` (with dropout it is often the higher of the two). The gap compares like
with like: ``train_eval/*`` is a fixed subset of the training data evaluated in eval mode,
by the same validation loop as ``val/*`` (the DataModule's second validation loader).
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from dropout_lab.learned_rates import learned_rates

# The HParams dashboard shows the last value of each of these tags for every run.
# hp/test_* copy the test metrics, deterministic and with MC dropout (test_mc/, see uncertainty.py).
TEST_SUMMARY = {
    f"hp/{loop}_{name}": f"{loop}/{name}" for loop in ("test", "test_mc") for name in ("acc", "nll", "ece", "brier")
}
HPARAM_METRICS = ("hp/val_acc_best", "hp/gap_loss", "hp/gap_acc", *TEST_SUMMARY)

# TensorBoard 2.21's HParams tab ticks five hyperparameter columns (and the first five metrics): those whose
# HParamInfo says `differs` first, then by name. A run cannot know whether its values differ from other runs',
# so `differs` is set here for the one thing TensorBoard uses it for, to pick the first hparams_table keys.
HPARAMS_SHOWN = 5

LAYOUT = {
    "generalization": {
        "loss: train (eval mode) vs val": ["Multiline", ["train_eval/loss", "val/loss"]],
        "accuracy: train (eval mode) vs val": ["Multiline", ["train_eval/acc", "val/acc"]],
        # One chart each: the loss gap and the accuracy gap have different scales.
        "gap/loss = val - train_eval": ["Multiline", ["gap/loss"]],
        "gap/acc = train_eval - val": ["Multiline", ["gap/acc"]],
    },
    "training (dropout on)": {"loss and accuracy": ["Multiline", ["train/loss", "train/acc"]]},
    "dropout rates": {"p of every dropout layer": ["Multiline", [r"dropout/p/.*"]]},  # a regex: all layers
}


class GeneralizationGap(L.Callback):
    """After every validation epoch, log ``gap/loss`` = val - train_eval and ``gap/acc`` = train_eval - val.

    Both values are positive when the model does better on data it was trained on.
    """

    def __init__(self) -> None:
        self.val_acc_best = -math.inf
        self.validated: dict[str, float] = {}  # the gap of a trainer.validate run

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics  # this epoch's values of both validation loaders, reduced over ranks
        if trainer.sanity_checking or "train_eval/loss" not in metrics:
            return
        self.val_acc_best = max(self.val_acc_best, metrics["val/acc"].item())
        gap = {
            "gap/loss": metrics["val/loss"] - metrics["train_eval/loss"],
            "gap/acc": metrics["train_eval/acc"] - metrics["val/acc"],
        }
        if trainer.state.fn == TrainerFn.VALIDATING:
            # python train.py validate: self.log here would put the gap in every dataloader's column of Lightning's
            # results table (values logged at epoch end belong to no dataloader), and hp/* would have no HParams
            # session to join. Straight to the loggers, and printed once after the table (teardown).
            self.validated = {key: value.item() for key, value in gap.items()}
            for logger in trainer.loggers:
                logger.log_metrics(self.validated, step=trainer.global_step)
            return
        summary = {"hp/val_acc_best": self.val_acc_best, "hp/gap_loss": gap["gap/loss"], "hp/gap_acc": gap["gap/acc"]}
        # The values are already global and equal on every rank: averaging them changes nothing.
        pl_module.log_dict(gap | summary, sync_dist=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "validate" and self.validated and trainer.is_global_zero:
            print("  ".join(f"{key} {value:.6g}" for key, value in self.validated.items()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Straight to the loggers, not self.log: the printed test table would show each value twice.
        # The values are already reduced over ranks; loggers write on rank 0 only.
        summary = {
            tag: trainer.callback_metrics[key].item()
            for tag, key in TEST_SUMMARY.items()
            if key in trainer.callback_metrics
        }
        for logger in trainer.loggers:
            logger.log_metrics(summary, step=trainer.global_step)

    def state_dict(self) -> dict:
        return {"val_acc_best": self.val_acc_best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.val_acc_best = state_dict["val_acc_best"]


class TensorBoardLayout(L.Callback):
    """Write the custom-scalars layout and the run's hyperparameters into the TensorBoard run."""

    def __init__(self) -> None:
        # tune.py turns this off and writes the summary at a trial's end, with the trial's state:
        # TensorBoard reads only the first HParams summary of a run.
        self.log_hparams = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger):
            return
        # --ckpt_path=last resumes logging into the run folder that already holds both (see cli.py);
        # writing them again would put the hp/ placeholders at step 0 after later steps.
        if trainer.ckpt_path and any(Path(logger.log_dir).glob("events.out.tfevents.*")):
            return
        logger.experiment.add_custom_scalars(LAYOUT)
        if not self.log_hparams or not trainer.is_global_zero:  # other ranks' experiment writes nothing
            return
        # Lightning's own hyperparameter logging is off (save_hyperparameters(logger=False)) so that
        # the summary is written once, here, with the metrics the HParams dashboard should compare.
        metrics = hparam_metrics(pl_module)
        # The placeholders make the hp/ metrics exist from the start; their last value is the real one.
        logger.log_metrics({tag: math.nan for tag in metrics})
        add_hparams_summary(logger.experiment, hparams_table(pl_module, trainer.datamodule), metrics)


def hparam_metrics(model: L.LightningModule) -> list[str]:
    """The hp/ tags the HParams tab compares for this model: HPARAM_METRICS, and hp/p_<layer> of learned rates."""
    return [*HPARAM_METRICS, *(f"hp/p_{name}" for name in learned_rates(model))]


def add_hparams_summary(writer: SummaryWriter, params: dict, metrics: Sequence[str] = HPARAM_METRICS) -> None:
    """Write the run's HParams summary, its first ``HPARAMS_SHOWN`` keys marked to be shown without ticking."""
    # A bool as the flags spell it: the summary would store it as the number 0 or 1.
    params = {
        key: str(v).lower() if isinstance(v, bool) else v if isinstance(v, (int, float, str)) else str(v)
        for key, v in params.items()
    }
    summaries = hparams(params, {tag: math.nan for tag in metrics})
    plugin_data = summaries[0].value[0].metadata.plugin_data  # the experiment: its hparam_infos and metric_infos
    content = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    shown = list(params)[:HPARAMS_SHOWN]
    for info in content.experiment.hparam_infos:
        info.differs = info.name in shown
    plugin_data.content = content.SerializeToString()
    file_writer = writer._get_file_writer()  # reopens the writer Lightning closes at the end of fit (tune.py)
    for summary in summaries:
        file_writer.add_summary(summary)
    file_writer.flush()


def hparams_table(model: L.LightningModule, datamodule: L.LightningDataModule | None) -> dict:
    """The run's settings for the HParams dashboard, the columns it shows first leading.

    First (shown without ticking, see ``HPARAMS_SHOWN``): the model class, its dropout rates (every number
    whose name ends in ``dropout``), ``learn_dropout`` and ``dropout_schedule``; then the learning rate,
    ``seed_everything``, the data class, the other dropout settings, the data's seeds, and the rest.
    LightningCLI's ``_class_path``/``_instantiator`` are left out (the class is the ``model`` column); a key
    that model and data share is recorded as ``model.KEY`` and ``data.KEY``, as the flags name them.
    """
    model_params = {key: value for key, value in model.hparams.items() if not key.startswith("_")}
    for key in ("lr", "weight_decay", "cosine"):  # what the optimizer ran with, also for a model without them
        if hasattr(model, key):
            model_params[key] = getattr(model, key)
    data_params = {key: value for key, value in getattr(datamodule, "hparams", {}).items() if not key.startswith("_")}
    shared = model_params.keys() & data_params.keys()
    model_params = {(f"model.{key}" if key in shared else key): value for key, value in model_params.items()}
    data_params = {(f"data.{key}" if key in shared else key): value for key, value in data_params.items()}
    params = {
        "model": type(model).__name__,
        # The rates (dropout, input_dropout, conv_dropout), then how they are used: fixed, learned or scheduled.
        # Runs that differ in those would otherwise look the same; lr and the seed are one tick away.
        **{key: value for key, value in model_params.items() if key.endswith("dropout") and is_number(value)},
        **{key: model_params[key] for key in ("learn_dropout", "dropout_schedule") if key in model_params},
        **{key: value for key, value in model_params.items() if key == "lr"},  # not dropout_lr, a setting
        "seed_everything": int(os.environ.get("PL_GLOBAL_SEED", -1)),
        "data": type(datamodule).__name__ if datamodule is not None else None,
        **{key: value for key, value in model_params.items() if "dropout" in key},
        **{key: value for key, value in data_params.items() if key.endswith("seed")},
    }
    return params | {key: value for key, value in (model_params | data_params).items() if key not in params}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
