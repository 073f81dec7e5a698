"""Train a classifier that uses CustomDropout, then test its best checkpoint.

python train.py                                      # MLP on the 5,000 embedded MNIST digits
python train.py --model=CNNClassifier --model.dropout=0.3
python train.py --config configs/cnn_mnist5k.yaml --trainer.max_epochs=3
python train.py --help                               # the flags; --model.help CNNClassifier: one class's

After training, LightningCLI's subcommands (model and data come from the checkpoint):
python train.py test --ckpt_path=lightning_logs/version_0/checkpoints/last.ckpt --model.mc_samples=30
python train.py predict --ckpt_path=... --output=predictions.csv     # also validate, and fit
validate, test and predict write into the checkpoint's run: lightning_logs/version_0/test_0, test_1, predict_0, ...
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from dropout_lab.cli import EVALUATE, DropoutLabCLI, run_test
from dropout_lab.data.files import DatasetFilesError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def main(args: list[str] | dict | None = None) -> None:
    try:
        train_or_evaluate(args)
    except DatasetFilesError as error:  # missing or corrupt dataset files: the message says what to do
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def train_or_evaluate(args: list[str] | dict | None) -> None:
    argv = sys.argv[1:] if args is None else args
    # A dict (as LightningCLI takes it) names its subcommand under "subcommand".
    subcommand = argv.get("subcommand") if isinstance(argv, dict) else argv[0] if argv else None
    if subcommand in SUBCOMMANDS:
        cli = DropoutLabCLI(args, run=True)  # LightningCLI runs the subcommand
        trainer = cli.trainer
    else:
        cli = DropoutLabCLI(args)
        trainer = cli.trainer
        trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config.ckpt_path)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best and trainer.is_global_zero:
            why = "checkpointing is off" if trainer.checkpoint_callback is None else "no checkpoint was written"
            print(f"Testing the final weights: {why}, so there is no best checkpoint to test.")
        run_test(trainer, cli.model, cli.datamodule, ckpt_path=best or None)
    log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
    if trainer.is_global_zero:
        print_where_the_run_is(trainer, log_dir, cli.subcommand)
    # Lightning leaves a DDP process group open for another fit; left to the interpreter's exit,
    # gloo's threads were seen to abort the process (SIGABRT) after all the work was done.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def print_where_the_run_is(trainer: Trainer, log_dir: str | None, subcommand: str | None) -> None:
    logger = trainer.logger
    # validate, test and predict have the checkpoint callback too, but write no checkpoint; they log into
    # the checkpoint's run (RUN/test_0, ...: see DropoutLabCLI.log_into_the_checkpoints_run).
    evaluation = subcommand in EVALUATE
    checkpoints = None if evaluation else trainer.checkpoint_callback
    this = f"this {subcommand}" if evaluation else "this run"
    if trainer.fast_dev_run:
        print("\nfast_dev_run: nothing of this run was written (Lightning turns logs and checkpoints off).")
    elif isinstance(logger, TensorBoardLogger):
        print(f"\n{'Checkpoints and TensorBoard logs' if checkpoints else 'TensorBoard logs'} of {this}: {log_dir}")
        print(f"Compare runs in TensorBoard:  tensorboard --logdir {Path(logger.root_dir)}")
    elif logger is not None:
        print(f"\n{'Checkpoints and logs' if checkpoints else 'Logs'} of {this}: {log_dir}")
    elif checkpoints is not None:
        print(f"\nCheckpoints of this run: {checkpoints.dirpath}")
    elif evaluation:
        print(f"\nconfig.yaml of {this}: {log_dir}")


if __name__ == "__main__":
    main()
