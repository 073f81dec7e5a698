"""python train.py fit|validate|test|predict: model and data from the checkpoint, flags over them."""

import csv
from pathlib import Path

import pytest
import torch
from conftest import read_events, run_train
from jsonargparse import Namespace

from dropout_lab import MNIST5kDataModule
from dropout_lab.cli import DEFAULT_ROOT_DIR, DropoutLabCLI, runs_folder

QUICK = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
TINY_CNN = ["--model=CNNClassifier", "--model.channels=[4]", "--model.hidden=16", "--data.batch_size=16"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A CNN fitted for a few steps by ``train.py fit`` (which does not test)."""
    root = tmp_path_factory.mktemp("fit")
    fit = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2"]
    result = run_train("fit", *TINY_CNN, *fit, *QUICK, root=root)
    (run_dir,) = (root / "lightning_logs").iterdir()
    assert f"Checkpoints and TensorBoard logs of this run: {run_dir}" in result.stdout
    assert not any(tag.startswith("test") for tag in read_events(run_dir).Tags()["scalars"])
    return run_dir / "checkpoints" / "last.ckpt"


def new_run(root):
    (run_dir,) = (root / "lightning_logs").iterdir()
    return run_dir


@pytest.mark.slow
def test_test_takes_the_cnn_from_the_checkpoint_and_logs_calibration_and_mc(tmp_path, checkpoint):
    run_train(
        "test",
        f"--ckpt_path={checkpoint}",
        "--model.mc_samples=3",
        "--trainer.limit_test_batches=2",
        *QUICK,
        root=tmp_path,
    )
    run_dir = new_run(tmp_path)
    config = (run_dir / "config.yaml").read_text()
    assert "class_path: dropout_lab.CNNClassifier" in config and "- 4" in config and "hidden: 16" in config
    assert "mc_samples: 3" in config and "batch_size: 16" in config  # the flag, and the checkpoint's data
    events = read_events(run_dir)
    loops = ("test/acc", "test/loss", "test/nll", "test/ece", "test/brier")
    assert {*loops, "test_mc/acc", "test_mc/nll", "test_mc/ece", "test_mc/brier"} <= set(events.Tags()["scalars"])
    assert {"test/reliability_diagram", "test/entropy_right_vs_wrong"} <= set(events.Tags()["images"])


@pytest.mark.slow
def test_validate_runs_the_validation_loops_of_the_checkpoint(tmp_path, checkpoint):
    run_train("validate", f"--ckpt_path={checkpoint}", "--trainer.limit_val_batches=2", *QUICK, root=tmp_path)
    assert {"val/acc", "train_eval/acc", "gap/loss"} <= set(read_events(new_run(tmp_path)).Tags()["scalars"])


@pytest.mark.slow
def test_predict_writes_one_row_per_image_of_the_held_out_split(tmp_path, checkpoint):
    output = tmp_path / "not" / "yet" / "predictions.csv"  # folders that do not exist are created
    args = ["--model.mc_samples=3", "--data.batch_size=8", "--trainer.limit_predict_batches=2", f"--output={output}"]
    result = run_train("predict", f"--ckpt_path={checkpoint}", *args, *QUICK, root=tmp_path)
    assert str(output) in result.stdout
    assert f"\nTensorBoard logs of this run: {new_run(tmp_path)}" in result.stdout  # predict wrote no checkpoint
    with open(output) as f:
        rows = list(csv.DictReader(f))
    columns = ["index", "target", "prediction", "confidence", "entropy", "mutual_information"]
    assert list(rows[0]) == columns + [f"p_{k}" for k in range(10)]
    assert [int(row["index"]) for row in rows] == list(range(16))  # 2 batches of 8: the flag overrode the 16
    data = MNIST5kDataModule()
    data.setup("predict")
    assert [int(row["target"]) for row in rows] == data.test_set.labels[:16].tolist()  # the run's test split
    for row in rows:
        probs = [float(row[f"p_{k}"]) for k in range(10)]
        assert sum(probs) == pytest.approx(1, abs=1e-4) and float(row["confidence"]) == pytest.approx(max(probs))
        assert float(row["mutual_information"]) > 0  # three different dropout masks


def cli_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        DropoutLabCLI(args, run=True)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_an_evaluation_without_a_checkpoint_says_how_to_give_one(tmp_path, capsys, subcommand):
    err = cli_error([subcommand, f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert f"{subcommand} needs the checkpoint to evaluate: --ckpt_path=" in err
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow  # needs the fitted checkpoint
def test_a_missing_truncated_or_foreign_checkpoint_is_refused_before_any_run_folder(tmp_path, capsys, checkpoint):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "hyper_parameters": {"lr": 0.1}}, foreign)
    for path, message in [
        (tmp_path / "nothing.ckpt", "no such file"),
        (truncated, "cannot be loaded: it is truncated, corrupt"),
        (foreign, "was not written by this template's train.py"),
    ]:
        err = cli_error(["test", f"--ckpt_path={path}", f"--trainer.default_root_dir={tmp_path}"], capsys)
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow  # needs the fitted checkpoint
def test_mc_samples_zero_is_refused_with_the_allowed_range(tmp_path, capsys, checkpoint):
    args = ["test", f"--ckpt_path={checkpoint}", "--model.mc_samples=0", f"--trainer.default_root_dir={tmp_path}"]
    assert "mc_samples is the number of forward passes per image and must be an integer >= 1, got 0" in cli_error(
        args, capsys
    )
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow  # needs the fitted checkpoint
def test_ckpt_path_last_looks_where_the_logger_of_the_flags_keeps_its_runs(tmp_path, checkpoint):
    earlier = tmp_path / "runs" / "digits" / "version_0" / "checkpoints"
    earlier.mkdir(parents=True)
    (earlier / "last.ckpt").write_bytes(checkpoint.read_bytes())
    logger = ["--trainer.logger=TensorBoardLogger", f"--trainer.logger.save_dir={tmp_path / 'runs'}"]
    args = ["validate", "--ckpt_path=last", *logger, "--trainer.logger.name=digits", "--trainer.limit_val_batches=1"]
    run_train(*args, *QUICK, root=tmp_path)
    assert "val/acc" in read_events(tmp_path / "runs" / "digits" / "version_1").Tags()["scalars"]


def logger(class_name: str, **init_args) -> Namespace:
    return Namespace(class_path=f"lightning.pytorch.loggers.{class_name}", init_args=Namespace(**init_args))


@pytest.mark.parametrize(
    ("logger_flags", "expected"),
    [
        (None, "root/lightning_logs"),  # the Trainer's default TensorBoardLogger
        (False, "root/lightning_logs"),  # no logger: checkpoints still go there
        (logger("TensorBoardLogger", save_dir="tb", name="digits"), "tb/digits"),
        (logger("TensorBoardLogger", save_dir="tb", name=None), "tb"),  # no name: runs directly in save_dir
        (logger("CSVLogger", save_dir=DEFAULT_ROOT_DIR), "root/lightning_logs"),  # save_dir left to default_root_dir
        (logger("MLFlowLogger", save_dir="mlruns"), "root/lightning_logs"),  # keeps no version_N folders
        ([logger("CSVLogger", save_dir="csv", name="a"), logger("TensorBoardLogger", save_dir="tb")], "csv/a"),
    ],
)
def test_runs_folder_is_where_the_logger_of_the_flags_puts_version_folders(logger_flags, expected):
    assert runs_folder(Namespace(default_root_dir="root", logger=logger_flags)) == Path(expected)
