"""The command line: LightningCLI with this template's defaults.

Every argument of the model, the DataModule and the Trainer is a flag (``--model.dropout=0.3``),
read from the classes' signatures and docstrings; YAML files in configs/ only set those flags.
"""

from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from dropout_lab.callbacks import GeneralizationGap, TensorBoardLayout
from dropout_lab.classifier import Classifier


class DropoutLabCLI(LightningCLI):
    """``python train.py --help`` lists what this parser accepts."""

    def __init__(self, args: Optional[list[str]] = None) -> None:
        super().__init__(
            Classifier,
            L.LightningDataModule,
            subclass_mode_model=True,  # --model=MLPClassifier or --model=CNNClassifier (or yours)
            subclass_mode_data=True,  # --data=<any LightningDataModule with input_shape and num_classes>
            seed_everything_default=0,
            # Callbacks given here are always present; --trainer.callbacks adds to them.
            trainer_defaults={
                "max_epochs": 10,
                "log_every_n_steps": 10,
                "callbacks": [GeneralizationGap(), TensorBoardLayout(), LearningRateMonitor("step")],
            },
            run=False,
            args=args,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {"model": {"class_path": "dropout_lab.MLPClassifier"}, "data": {"class_path": "dropout_lab.MNIST5kDataModule"}}
        )
        # The data decides the shape of the network's input and output.
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max", "checkpoint.save_last": True})
        parser.add_argument("--ckpt_path", type=Optional[str], default=None, help="Resume fitting from this checkpoint.")
