"""The command line: LightningCLI with this template's defaults.

Every argument of the model, the DataModule and the Trainer is a flag (``--model.dropout=0.3``),
read from the classes' signatures and docstrings; YAML files in configs/ only set those flags.

``python train.py fit|validate|test|predict`` are LightningCLI's subcommands; for validate, test and
predict the model's and the DataModule's classes and arguments come from ``--ckpt_path``'s checkpoint,
and flags on the command line override them.

Bad input stops the run before anything is written, with one message that says what is wrong
and what to do: a mistyped key gets the closest valid one, an unknown class name the closest of this
package's classes and the list of them (both in suggestions.py), an error raised in a class's
``__init__`` is shown as it was raised (not inside jsonargparse's longer Union message).
"""

import inspect
import json
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import lightning.pytorch.loggers
import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from dropout_lab.accuracy_interval import AccuracyInterval
from dropout_lab.callbacks import GeneralizationGap, TensorBoardLayout
from dropout_lab.checkpointing import (
    AtomicCheckpointIO,
    RNGState,
    check_resumable,
    check_weights_fit,
    find_last_checkpoint,
    load_checked,
)
from dropout_lab.classifier import Classifier
from dropout_lab.dropout_schedule import DropoutSchedule
from dropout_lab.nan_guard import NaNGuard
from dropout_lab.ood import OODDetection, ood_test_loader
from dropout_lab.prediction import PredictionCSV
from dropout_lab.suggestions import SuggestingParser, init_parameters, package_classes
from dropout_lab.uncertainty import UncertaintyFigures

EVALUATE = ("validate", "test", "predict")  # the subcommands that take model and data from the checkpoint

DEFAULT_ROOT_DIR = "<trainer.default_root_dir>"  # a logger's save_dir placeholder, see with_logger_save_dir
FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")  # loggers that keep runs in save_dir/name/version_N
USAGE = "python train.py [--config FILE] [--model CLASS] [--model.ARG VALUE] [--data CLASS] [--trainer.ARG VALUE] ..."
DESCRIPTION = """Train a classifier that uses CustomDropout, then test it.

The flags people change most: --model=MLPClassifier or CNNClassifier (or your_module.YourClassifier),
--model.dropout=0.3 (the drop probability p), --data=MNIST5kDataModule, MNISTDataModule,
FashionMNISTDataModule or CIFAR10DataModule, --trainer.max_epochs=15, --config=configs/cnn_mnist5k.yaml.
One class's own flags and their meaning: --model.help CNNClassifier, --data.help MNISTDataModule.
After training: python train.py test|validate|predict --ckpt_path=RUN/checkpoints/last.ckpt (the model and
data come from the checkpoint; --model.mc_samples=30 for MC dropout; they write into the checkpoint's run,
RUN/test_0, ...); predict --data=ImageFilesDataModule --data.paths='my_digits/*.png': your own images;
python train.py fit: fit only. Every flag follows."""

# Two notices from inside Lightning that are not about the run: an advertisement on every Trainer, and a
# deprecation inside Lightning's own code (lightning/pytorch/utilities/_pytree.py uses torch's LeafSpec).
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)


class DropoutLabCLI(LightningCLI):
    """``python train.py --help`` lists what this parser accepts."""

    usage, description = USAGE, DESCRIPTION  # the opening of --help; tune.py's parser has its own

    def __init__(self, args: list[str] | dict | None = None, run: bool = False) -> None:
        """``run=False``: build the classes and parse no subcommand (train.py then fits and tests);
        ``run=True``: the first argument is a subcommand, which runs. ``args``: the command line as a list, or
        as LightningCLI takes it, a dict (with ``run=True``: ``{"subcommand": "test", "test": {...}}``)."""
        self.with_subcommands = run
        self.checkpoint, self.checkpoint_path = {}, None  # an evaluation's, see start_from_checkpoint
        super().__init__(
            Classifier,
            L.LightningDataModule,
            subclass_mode_model=True,  # --model=MLPClassifier or --model=CNNClassifier (or yours)
            subclass_mode_data=True,  # --data=<any LightningDataModule with input_shape and num_classes>
            seed_everything_default=0,
            # No --optimizer/--lr_scheduler: the model's lr, weight_decay and cosine arguments are the
            # optimizer settings, recorded in HParams and checkpoints, and the cosine follows the run's length.
            auto_configure_optimizers=False,
            parser_kwargs={"description": self.description, "usage": self.usage},
            # Callbacks given here are always present; --trainer.callbacks adds to them.
            trainer_defaults={
                "max_epochs": 15,
                "log_every_n_steps": 10,
                "callbacks": [
                    GeneralizationGap(),
                    TensorBoardLayout(),
                    LearningRateMonitor("step"),
                    RNGState(),
                    NaNGuard(),
                    UncertaintyFigures(),
                    AccuracyInterval(),
                    # last.ckpt at every epoch end, for resuming. Lightning 2.6's save_last writes it
                    # only when the best-model checkpoint above is written, i.e. when val/acc improved;
                    # and by default after validation, which val_check_interval and
                    # check_val_every_n_epoch move off the epoch's end (a resume from mid-epoch is not exact).
                    ModelCheckpoint(
                        filename="last",
                        monitor=None,
                        save_top_k=1,
                        enable_version_counter=False,
                        save_on_train_epoch_end=True,
                    ),
                ],
                # Atomic saves and weights-only loads; --trainer.plugins replaces this list.
                "plugins": [{"class_path": "dropout_lab.checkpointing.AtomicCheckpointIO"}],
            },
            parser_class=SuggestingParser,
            run=run,
            args=args,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {
                "model": {"class_path": "dropout_lab.MLPClassifier"},
                "data": {"class_path": "dropout_lab.MNIST5kDataModule"},
            }
        )
        # The data decides the shape of the network's input and output.
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        count_batches_as_int(parser)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max"})
        if not self.with_subcommands:  # the subcommands have the Trainer method's own --ckpt_path
            parser.add_argument(
                "--ckpt_path",
                type=str | None,
                default=None,
                help="Resume fitting from this checkpoint; 'last': the newest run's, under --trainer.default_root_dir "
                "(or the TensorBoard logger's save_dir/name); "
                "'auto': the same if there is one, else start a new run (one command for the first start and "
                "every restart).",
            )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument(
                "--output",
                type=str | None,
                default=None,
                help="CSV file of the predictions (folders are created); default: predictions.csv in this "
                "predict's folder inside the checkpoint's run (RUN/predict_N/).",
            )
        if subcommand == "test":
            add_ood_data_argument(parser)
        return parser

    def start_from_checkpoint(self, parser: LightningArgumentParser, argv: list[str]) -> Namespace | None:
        """The checkpoint's model and DataModule, classes and arguments, for the parse to start from.

        Read before the parse, from the ``ckpt_path`` that the flags or a config file give (``given_settings``),
        so that every flag of the checkpoint's classes is accepted (``--model.conv_dropout`` of a CNN) and
        overrides the checkpoint's value. A resumed fit starts from them too: ``--ckpt_path=last`` alone (or
        ``ckpt_path: last`` in a config file) continues a run trained with ``--model.dropout=0.7`` at 0.7, and a
        flag that changes a saved argument is refused by check_resumable.
        """
        subcommand = argv[0] if self.with_subcommands else None
        given = given_settings(parser, argv, subcommand)
        path = given.ckpt_path if given is not None else None
        if path is None:  # none (or settings the parse itself will refuse, with its own message)
            return None
        try:
            if path in ("last", "auto"):
                path = str(find_last_checkpoint(runs_folder(given.trainer)))
            self.load_checkpoint(path)
        except ValueError:
            # A fit reports a checkpoint it cannot resume after the parse, which first names any mistyped flag:
            # resume_last_run (or auto's new run) and check_resumable.
            if subcommand not in EVALUATE:
                self.checkpoint, self.checkpoint_path = {}, None
                return None
            raise
        start, section = Namespace(), f"{subcommand}." if subcommand else ""
        # A class named on the command line (--data=ImageFilesDataModule) replaces the checkpoint's, whose
        # arguments jsonargparse would otherwise carry over to it (as in its issue #460).
        for key, saved in (
            ("model", self.checkpoint["hyper_parameters"]),
            ("data", self.checkpoint.get("datamodule_hyper_parameters", {})),
        ):
            named = last_value(argv, f"--{key}")
            if "_class_path" in saved and (named is None or same_class(named, saved["_class_path"])):
                start[section + key] = class_and_arguments(saved)
        return start

    def read_checkpoint(self, path: str) -> dict:
        """The checkpoint at ``path``, read from the file once per command: later checks, and the Trainer's own
        load (AtomicCheckpointIO.read), take this copy."""
        if path != self.checkpoint_path:
            self.checkpoint, self.checkpoint_path = load_checked(path), path
        return self.checkpoint

    def load_checkpoint(self, path: str) -> None:
        """The checkpoint of an evaluation, or of a fit that resumes: it must name the model class that wrote it."""
        self.read_checkpoint(path)
        if "_class_path" not in self.checkpoint.get("hyper_parameters", {}):
            raise ValueError(
                f"--ckpt_path={path} was not written by this template's train.py (its hyperparameters "
                "name no model class). Pass a checkpoint from lightning_logs/version_N/checkpoints/."
            )

    def use_checkpoint(self, subcommand: str) -> None:
        """Check that the evaluation has its checkpoint; load one that a config file named."""
        config = self.config[subcommand]
        if not config.ckpt_path:
            raise ValueError(
                f"{subcommand} needs the checkpoint to evaluate: --ckpt_path=lightning_logs/version_N/checkpoints/"
                "last.ckpt (a run of python train.py)."
            )
        if config.ckpt_path == "last":  # found before the parse, or else where a config file's trainer logs
            config.ckpt_path = self.checkpoint_path or str(find_last_checkpoint(runs_folder(config.trainer)))
        self.load_checkpoint(config.ckpt_path)  # read before the parse, unless a config file named it
        self.fill_data_from_checkpoint(subcommand)

    def fill_data_from_checkpoint(self, subcommand: str) -> None:
        """Give a DataModule that takes them (ImageFilesDataModule) the model's input shape and normalization."""
        hparams = self.checkpoint["hyper_parameters"]
        saved = {**(self.checkpoint.get("normalization") or {}), **hparams}
        for data in (self.config[subcommand].data, self.config[subcommand].get("ood_data")):  # test's --ood_data too
            for key in ("input_shape", "num_classes", "mean", "std"):
                if isinstance(data, Namespace) and key in data.init_args and data.init_args[key] is None:
                    data.init_args[key] = saved.get(key)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI's own version parses the checkpoint's model arguments *over* the command line
        # (--model.mc_samples=30 would be lost) and ignores the DataModule's; start_from_checkpoint does both.
        pass

    @property
    def run_config(self) -> Namespace:
        """This run's settings: the subcommand's section of the config, or all of it without a subcommand."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | dict | Namespace | None) -> None:
        """Parse; validate, test and predict start from the checkpoint's model and data (start_from_checkpoint)."""
        argv = as_argv(sys.argv[1:] if args is None else args, self.with_subcommands)
        for section, base in (("model", Classifier), ("data", L.LightningDataModule)):
            # Without a class name jsonargparse would show the base class: the abstract Classifier, whose
            # only flag is num_classes, as if it were the model to use.
            following = argv[argv.index(f"--{section}.help") + 1 :] if f"--{section}.help" in argv else None
            if following is not None and (not following or following[0].startswith("-")):
                names = package_classes(base)
                print(
                    f"--{section}.help takes a class name: one of {', '.join(names)}, or your_module.YourClass "
                    f"(for example: python train.py --{section}.help {names[-1]})."
                )
                parser.exit(0)
        argv = with_logger_save_dir(argv)
        evaluation = self.with_subcommands and bool(argv) and argv[0] in EVALUATE
        try:
            check_ood_data_only_on_test(argv, self.with_subcommands)
            # A mistyped subcommand is left to the parser, which names the closest one.
            known = not self.with_subcommands or (bool(argv) and argv[0] in ("fit", *EVALUATE))
            start = self.start_from_checkpoint(parser, argv) if known else None
            # As LightningCLI parses a list, without its warning about args given beside sys.argv.
            self.config = parser.parse_args(argv, namespace=start)
            if evaluation:
                self.use_checkpoint(argv[0])
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")

    def before_instantiate_classes(self) -> None:
        config = self.run_config
        logger = config.trainer.logger
        if isinstance(logger, Namespace) and logger.init_args.get("save_dir") == DEFAULT_ROOT_DIR:
            logger.init_args.save_dir = config.trainer.default_root_dir or os.getcwd()
        if self.subcommand in (None, "fit") and config.ckpt_path in ("last", "auto"):
            self.resume_last_run()
        if self.subcommand in EVALUATE:
            self.log_into_the_checkpoints_run()
        samples = (
            config.model.get("init_args", Namespace()).get("mc_samples") if self.subcommand == "validate" else None
        )
        if isinstance(samples, int) and samples > 1:
            # val/* are what checkpoints were chosen by and the gap was measured with: one eval-mode pass, always.
            print(
                f"--model.mc_samples={samples}: validate is deterministic (one eval-mode pass, as in training), so "
                f"it ignores it; for MC dropout: python train.py test --ckpt_path=... --model.mc_samples={samples}"
            )
        self.leave_out_callbacks_without_use()

    def leave_out_callbacks_without_use(self) -> None:
        """Drop the default callbacks that the Trainer's flags leave nothing to do (and that it would refuse)."""
        trainer = self.run_config.trainer
        callbacks = self.trainer_defaults["callbacks"]
        if trainer.logger is False:  # LearningRateMonitor raises without a logger
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        if trainer.enable_checkpointing is False:  # the Trainer refuses a ModelCheckpoint then
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
            self._parser(self.subcommand).callback_keys.remove("checkpoint")  # the --checkpoint.* one
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}

    def log_into_the_checkpoints_run(self) -> None:
        """Write an evaluation into the run of its checkpoint, as ``<run>/test_0``, ``test_1``, ``validate_0``, ...

        Not a new ``version_N`` beside the training runs: the logs, config.yaml and predictions.csv of a
        test stay with the run they test. A checkpoint outside a run's ``checkpoints/`` folder gets its
        evaluations beside it. A ``--trainer.default_root_dir`` that the run is not inside wins: the evaluation
        goes there (``X/test_0``). Loggers that keep no folders (MLflow, ...) are left as they are.
        """
        config = self.run_config
        trainer = config.trainer
        checkpoint = Path(config.ckpt_path).resolve()  # model.ckpt in the working folder: its parent is '.'
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        asked = Path(trainer.default_root_dir).resolve() if trainer.default_root_dir else None
        home = asked if asked and not run_dir.is_relative_to(asked) else run_dir
        number = 0
        while (home / f"{self.subcommand}_{number}").exists():
            number += 1
        self.evaluation_dir = home / f"{self.subcommand}_{number}"
        trainer.default_root_dir = str(self.evaluation_dir)  # also without a logger: config.yaml goes there
        if trainer.logger is None or trainer.logger is True:  # the Trainer's default TensorBoardLogger, made explicit
            trainer.logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=Namespace())
        # TensorBoard's --logdir for it: the run's neighbours (it shows beside its training run), or the folder asked.
        logdir = run_dir.parent if home == run_dir else home
        for logger in trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]:
            if isinstance(logger, Namespace) and logger.class_path.rpartition(".")[2] in FOLDER_LOGGERS:
                # save_dir/name/version is the log folder: a version with a slash puts it inside the run.
                logger.init_args.save_dir, logger.init_args.name = str(logdir), ""
                logger.init_args.version = str(self.evaluation_dir.relative_to(logdir))
                if self.subcommand == "validate":
                    # Its val/*, train_eval/* and gap/* would be the training charts' tags in another run (a
                    # sub-folder is a run of its own to TensorBoard): Custom Scalars would draw stray points.
                    logger.init_args.prefix = "validate"  # validate-val/acc, ...

    def after_instantiate_classes(self) -> None:
        if self.subcommand in EVALUATE:
            # The ModelCheckpoints of an evaluation (which saves nothing) are those of the checkpoint's run: with
            # another folder, loading their state warns "The dirpath has changed ... won't be reloaded".
            saved = self.checkpoint.get("callbacks", {})
            for callback in self.trainer.checkpoint_callbacks:
                callback.dirpath = saved.get(callback.state_key, {}).get("dirpath", callback.dirpath)

    def resume_last_run(self) -> None:
        """Point ``ckpt_path`` at the newest ``last.ckpt`` and log into that run's folder again.

        Lightning's own ``ckpt_path="last"`` searches only the new run's (empty) folder.
        With ``auto``, finding none starts a new run instead of stopping.
        """
        config = self.run_config
        auto = config.ckpt_path == "auto"
        trainer = config.trainer
        logger = trainer.logger
        if logger is None or logger is True:  # the Trainer's default TensorBoardLogger, made explicit
            logger = trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=trainer.default_root_dir or os.getcwd()),
            )
        if not (isinstance(logger, Namespace) and logger.class_path.endswith("TensorBoardLogger")):
            flag = f"--ckpt_path={config.ckpt_path}"
            self.parser.error(f"{flag} finds runs through the TensorBoard logger; pass the checkpoint's path.")
        args = logger.init_args
        root = runs_folder(trainer)
        try:
            last = find_last_checkpoint(root)
        except ValueError as error:
            if auto:
                config.ckpt_path = None
                print(f"--ckpt_path=auto: no last.ckpt under {root}/*/checkpoints/, starting a new run")
                return
            self.parser.exit(2, f"error: {error}\n")
        run_dir = last.parent.parent
        config.ckpt_path = str(last)
        args.version = int(run_dir.name[len("version_") :]) if run_dir.name.startswith("version_") else run_dir.name
        # The stopped process may have logged steps after that checkpoint, which the resumed run logs again:
        # SummaryWriter's purge_step makes TensorBoard drop the stopped process's points from that step on.
        try:
            args.purge_step = self.read_checkpoint(str(last))["global_step"]
        except ValueError:  # an unreadable checkpoint: check_resumable names the problem before any work
            pass
        # SaveConfigCallback refuses to overwrite the first run's config.yaml; keep one per resume.
        resumes = len(list(run_dir.glob("config_resume_*.yaml")))
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config_resume_{resumes + 1}.yaml"}
        print(f"Resuming {run_dir} from {last}")

    def instantiate_classes(self) -> None:
        try:
            check_cuda_requested(self.run_config.trainer.accelerator)
            super().instantiate_classes()
            check_cpu_processes(self.trainer)
            if self.subcommand in (None, "fit"):  # needs model and trainer
                for callback in [*self.trainer.callbacks, *self.model.configure_callbacks()]:
                    if isinstance(callback, DropoutSchedule):
                        callback.check_cutoff(self.trainer.max_epochs)
            # The net as the Trainer will have it (learned rates swapped in), for the checks below, before any write.
            self.model.configure_model()
            ckpt_path = self.run_config.ckpt_path
            if ckpt_path and self.subcommand in EVALUATE:
                check_weights_fit(ckpt_path, self.checkpoint, self.model)
            elif ckpt_path:
                check_resumable(ckpt_path, self.model, self.datamodule, self.read_checkpoint(str(ckpt_path)))
            if ckpt_path and isinstance(self.trainer.strategy.checkpoint_io, AtomicCheckpointIO):
                self.trainer.strategy.checkpoint_io.read = (str(ckpt_path), self.checkpoint)
        except (ValueError, MisconfigurationException) as error:
            cause = innermost(error)
            if not isinstance(cause, (ValueError, MisconfigurationException)):
                raise  # not a complaint about the arguments: a bug, keep its traceback
            self.parser.exit(2, f"error: {cause}\n")

    def test(self, model: L.LightningModule, datamodule: L.LightningDataModule, **kwargs) -> None:
        run_test(self.trainer, model, datamodule, kwargs.get("ckpt_path"))

    def before_test(self) -> None:
        """With ``--ood_data``: its images, prepared and checked before any test loop runs, scored in every one."""
        ood_data = self.config_init.test.get("ood_data")
        if ood_data is None:
            return
        hparams = self.checkpoint["hyper_parameters"]
        # The checkpoint's training normalization and input shape (older checkpoints: its DataModule's, the same).
        data = self.datamodule
        normalization = self.checkpoint.get("normalization") or {"mean": data.mean, "std": data.std}
        input_shape = hparams.get("input_shape", getattr(data, "input_shape", None))
        try:
            loader = ood_test_loader(ood_data, normalization, input_shape)
        except ValueError as error:
            self.parser.exit(2, f"error: {error}\n")
        self.trainer.callbacks.append(OODDetection(loader, type(ood_data).__name__))

    def before_predict(self) -> None:
        output = self.config.predict.output
        if output and Path(output).is_dir():  # checked before the run folder is made and any work is done
            self.parser.exit(2, f"error: --output={output} is a folder: give a file, e.g. {Path(output) / 'p.csv'}\n")
        self.trainer.callbacks.append(PredictionCSV(output or str(self.evaluation_dir / "predictions.csv")))


def run_test(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path) -> None:
    """Test: the deterministic pass (test/*), then with ``mc_samples`` > 1 MC dropout (test_mc/*).

    Two loops, because the MC loop has the dropout layers on for all of it (on_test_model_eval) and
    no step switches modes by hand; both log into the same run, side by side.
    """
    samples = getattr(model, "mc_samples", 1)
    model.mc_samples = 1
    try:
        trainer.test(model, datamodule, ckpt_path=ckpt_path)
        if samples > 1:
            model.mc_samples = samples
            trainer.test(model, datamodule, ckpt_path=ckpt_path)
    finally:
        model.mc_samples = samples


def add_ood_data_argument(parser: LightningArgumentParser) -> None:
    """``test --ood_data=CLASS`` and every flag of that DataModule: out-of-distribution images to detect (ood.py)."""
    parser.add_subclass_arguments(
        L.LightningDataModule,
        "ood_data",
        required=False,
        help="A DataModule whose test images are scored against the test set as out of distribution (ood/*, "
        "ood_mc/* in TensorBoard), e.g. FashionMNISTDataModule for an MNIST model, or ImageFilesDataModule with "
        "--ood_data.paths; its images are normalized as the checkpoint's training data.",
    )


def check_ood_data_only_on_test(argv: list[str], with_subcommands: bool) -> None:
    """``--ood_data`` belongs to ``test``: refuse it on fit, validate, predict and train.py's fit-and-test."""
    subcommand = argv[0] if with_subcommands and argv else None
    if subcommand != "test" and any(arg.split("=")[0].split(".")[0] == "--ood_data" for arg in argv):
        raise ValueError(
            f"--ood_data scores out-of-distribution images in test only, not in {subcommand or 'a training run'}: "
            "python train.py test --ckpt_path=RUN/checkpoints/last.ckpt --ood_data=FashionMNISTDataModule"
        )


def class_and_arguments(hparams: dict) -> Namespace:
    """A checkpoint's saved hyperparameters as the ``class_path`` and ``init_args`` of ``--model``/``--data``."""
    class_path = hparams["_class_path"]
    accepted = init_parameters(class_path)
    # input_shape and num_classes are linked from the data; arguments the class no longer takes are left out.
    skipped = {"input_shape", "num_classes"}
    init_args = {key: value for key, value in hparams.items() if key in accepted and key not in skipped}
    return Namespace(class_path=class_path, init_args=Namespace(init_args))


def as_argv(args: list[str] | dict | Namespace, subcommands: bool) -> list[str]:
    """``args`` as a command line: a dict (or Namespace) becomes the config file it would be, ``--config JSON``."""
    if isinstance(args, Namespace):
        args = args.as_dict()
    if not isinstance(args, dict):
        return list(args)
    if not subcommands:
        return ["--config", json.dumps(args, default=str)]
    subcommand = args.get("subcommand")
    return [subcommand, "--config", json.dumps(args.get(subcommand) or {}, default=str)] if subcommand else []


def last_value(argv: list[str], flag: str) -> str | None:
    """The value of the last ``flag=VALUE`` or ``flag VALUE`` in ``argv``, or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
        elif arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def same_class(name: str, class_path: str) -> bool:
    """Whether ``--data=NAME`` (a class name, a dotted path or a JSON class spec) names ``class_path``'s class."""
    if name.lstrip().startswith("{"):
        name = json.loads(name).get("class_path", "")
    return name.rpartition(".")[2] == class_path.rpartition(".")[2]


def given_settings(parser: LightningArgumentParser, argv: list[str], subcommand: str | None) -> Namespace | None:
    """The ``ckpt_path`` and ``--trainer`` settings that ``argv`` and its config files give, before the model is known.

    Parsed without the ``--model``/``--data`` flags, which may belong to the classes of the checkpoint sought;
    None where even that parse fails (a config file's model arguments of the checkpoint's class): the full
    parse then says what is wrong.
    """
    kept, skip = [], False
    for arg in argv:
        key = arg.partition("=")[0]
        if skip or key.split(".")[0] in ("--model", "--data") or key.startswith("--print_config"):
            skip = not skip and "=" not in arg and not key.startswith("--print_config")  # the value that follows
            continue
        if key not in ("-h", "--help"):  # the help is the full parse's, with the checkpoint's classes
            kept.append(arg)
    try:
        with quiet_parse(parser):
            config = parser.parse_args(kept)
    except ArgumentError:
        return None
    return config[subcommand] if subcommand else config


@contextmanager
def quiet_parse(parser: LightningArgumentParser):
    """Parse with errors raised (as jsonargparse's ArgumentError), not printed and exited: a trial parse."""
    # The subcommands' parsers hand their errors to this one.
    before, parser.exit_on_error = parser.exit_on_error, False
    try:
        yield
    finally:
        parser.exit_on_error = before


def count_batches_as_int(parser: LightningArgumentParser) -> None:
    """Parse ``--trainer.limit_train_batches=1`` as 1 batch, as the Trainer's Python API takes it, not 1.0 (100%)."""
    # The Trainer's hint is float | int | None, and jsonargparse takes the first type that fits.
    for stage in ("train", "val", "test", "predict"):
        parser._option_string_actions[f"--trainer.limit_{stage}_batches"]._typehint = int | float | None


def with_logger_save_dir(argv: list[str]) -> list[str]:
    """``argv`` with ``--trainer.logger.save_dir`` added where a logger that requires it is named without it.

    ``--trainer.logger=CSVLogger`` alone fails with "the following arguments are required: save_dir"; the
    placeholder added here becomes the Trainer's default_root_dir, where Lightning's default logger writes.
    """
    names = [arg.partition("=")[2] for arg in argv if arg.startswith("--trainer.logger=")]
    if not names or any(arg.startswith("--trainer.logger.save_dir") for arg in argv):
        return argv
    logger_class = getattr(lightning.pytorch.loggers, names[-1].rpartition(".")[2], None)
    if not isinstance(logger_class, type):  # not one of Lightning's loggers, or true/false
        return argv
    save_dir = inspect.signature(logger_class).parameters.get("save_dir")
    if save_dir is None or save_dir.default is not save_dir.empty:
        return argv
    return [*argv, f"--trainer.logger.save_dir={DEFAULT_ROOT_DIR}"]


def runs_folder(trainer: Namespace) -> Path:
    """The folder that holds the ``version_N`` runs of the logger in these ``--trainer`` settings."""
    root = trainer.default_root_dir or os.getcwd()
    logger = trainer.logger
    if isinstance(logger, list):  # several loggers: checkpoints go to the first one's run folder
        logger = logger[0] if logger else None
    # Only these two keep their runs in save_dir/name/version_N; with the others (or the Trainer's
    # default logger, or none) checkpoints go to default_root_dir/lightning_logs/version_N.
    if not (isinstance(logger, Namespace) and logger.class_path.rpartition(".")[2] in FOLDER_LOGGERS):
        return Path(root) / "lightning_logs"
    save_dir = logger.init_args.get("save_dir")
    name = logger.init_args.get("name", "lightning_logs")
    return Path(root if save_dir in (None, DEFAULT_ROOT_DIR) else save_dir) / (name or "")  # name "": none


def innermost(error: BaseException) -> BaseException:
    """The exception at the bottom of a chain: the one raised in ``__init__``, not jsonargparse's wrapper."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def check_cuda_requested(accelerator: object) -> None:
    # Lightning says only "No supported gpu backend found!" for --trainer.accelerator=gpu.
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--trainer.accelerator={accelerator} needs a CUDA GPU, but torch finds none on this machine. "
            "Use --trainer.accelerator=cpu, or auto to use whatever is there."
        )


def check_cpu_processes(trainer: L.Trainer) -> None:
    # Lightning starts one process per CPU "device" without asking how many cores there are.
    cores = os.cpu_count() or 1
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
        raise ValueError(
            f"--trainer.devices={trainer.num_devices} would start {trainer.num_devices} training processes on the "
            f"CPU, but this machine has {cores} cores. Use --trainer.devices={cores} or fewer."
        )
