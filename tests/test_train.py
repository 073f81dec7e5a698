"""python train.py as a user runs it: event files, checkpoint, config, --help, CLI errors."""

import pytest
import torch
from conftest import QUICK, only_run_dir, read_events, run_train, scalars

from dropout_lab import CNNClassifier, MLPClassifier

pytestmark = pytest.mark.slow

TAGS = ["train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "lr-AdamW"]


@pytest.mark.parametrize("model", ["MLPClassifier", "CNNClassifier"])
def test_train_py_writes_tensorboard_scalars_checkpoint_and_config(tmp_path, model):
    result = run_train(f"--model={model}", "--model.dropout=0.3", *QUICK, root=tmp_path)
    run_dir = only_run_dir(tmp_path)

    events = read_events(run_dir)
    assert set(TAGS) <= set(events.Tags()["scalars"])
    assert len(scalars(events, "train/loss")) == 2 * 4  # every step: log_every_n_steps=1
    assert [step for step, _ in scalars(events, "val/acc")] == [3, 7]  # once per epoch, at the global step
    assert len(scalars(events, "test/acc")) == 1

    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # the best one and the last one
    model_class = {"MLPClassifier": MLPClassifier, "CNNClassifier": CNNClassifier}[model]
    restored = model_class.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert restored.hparams.dropout == 0.3

    config = (run_dir / "config.yaml").read_text()
    assert f"class_path: dropout_lab.{model}" in config and "dropout: 0.3" in config
    assert f"tensorboard --logdir {tmp_path / 'lightning_logs'}" in result.stdout


def test_default_run_uses_the_mlp_on_the_embedded_digits(tmp_path):
    run_train(*QUICK, root=tmp_path)
    config = (only_run_dir(tmp_path) / "config.yaml").read_text()
    assert "class_path: dropout_lab.MLPClassifier" in config
    assert "class_path: dropout_lab.MNIST5kDataModule" in config


def test_config_file_and_override_are_applied_in_order(tmp_path):
    run_train(
        "--config", "configs/cnn_mnist5k.yaml", "--config", "configs/debug.yaml", "--model.dropout=0.25", root=tmp_path
    )
    config = (only_run_dir(tmp_path) / "config.yaml").read_text()
    assert "class_path: dropout_lab.CNNClassifier" in config and "dropout: 0.25" in config
    assert "batch_norm: true" in config and "max_epochs: 1" in config  # the recipe's, then debug.yaml's
    assert "checkpoint:\n  dirpath: null\n  filename: null\n  monitor: null\n" in config  # the final weights are tested


def test_a_chosen_class_gets_its_own_defaults_not_the_default_classs():
    config = run_train("--data=MNISTDataModule", "--model=CNNClassifier", "--print_config", root=None).stdout
    assert "class_path: dropout_lab.MNISTDataModule" in config
    assert "val_size: 5000" in config and "batch_size: 128" in config  # MNIST5kDataModule's are 500 and 64


def test_seed_everything_makes_runs_repeatable(tmp_path):
    weights = []
    for name in ("a", "b"):
        run_train("--seed_everything=7", *QUICK, root=tmp_path / name)
        checkpoint = only_run_dir(tmp_path / name) / "checkpoints" / "last.ckpt"
        weights.append(torch.load(checkpoint, weights_only=True)["state_dict"])
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_help_lists_arguments_with_their_docstrings():
    assert "--trainer.max_epochs" in run_train("--help", root=None).stdout
    # In subclass mode the model's own arguments are listed per class.
    model_help = run_train("--model.help", "CNNClassifier", root=None).stdout
    assert "--model.conv_dropout" in model_help
    assert "drop probability p of whole channels" in model_help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.dropuot=0.3"], "dropuot"),
        (["--model.dropout=abc"], "abc"),
        (["--config", "configs/no_such_file.yaml"], "no_such_file.yaml"),
    ],
)
def test_bad_arguments_stop_before_training_and_name_the_problem(tmp_path, args, message):
    result = run_train(*args, root=tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "lightning_logs").exists()
