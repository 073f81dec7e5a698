"""python train.py fit|validate|test|predict: model and data from the checkpoint, flags over them."""

import csv
import re
from pathlib import Path

import pytest
import torch
from conftest import read_events, run_train
from jsonargparse import Namespace

from dropout_lab import MNIST5kDataModule
from dropout_lab.callbacks import LAYOUT
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


def evaluation_dir(result, subcommand: str, home: Path) -> Path:
    """The folder train.py's last lines name: a new one inside ``home`` (the checkpoint's run: RUN/test_N, ...)."""
    said = f"TensorBoard logs of this {subcommand}: "
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(said)]
    folder = Path(line[len(said) :])
    assert folder.parent == home and folder.name.startswith(f"{subcommand}_")
    return folder


@pytest.mark.slow
def test_test_takes_the_cnn_from_the_checkpoint_and_logs_calibration_and_mc(tmp_path, checkpoint):
    result = run_train(
        "test",
        f"--ckpt_path={checkpoint}",
        "--model.mc_samples=3",
        "--trainer.limit_test_batches=2",
        *QUICK,
        root=tmp_path,
    )
    run_dir = evaluation_dir(result, "test", tmp_path)  # the folder asked for, not the checkpoint's run
    assert not (tmp_path / "lightning_logs").exists()  # and no version_N in it
    config = (run_dir / "config.yaml").read_text()
    assert "class_path: dropout_lab.CNNClassifier" in config and "- 4" in config and "hidden: 16" in config
    assert "mc_samples: 3" in config and "batch_size: 16" in config  # the flag, and the checkpoint's data
    events = read_events(run_dir)
    loops = ("test/acc", "test/loss", "test/nll", "test/ece", "test/brier")
    assert {*loops, "test_mc/acc", "test_mc/nll", "test_mc/ece", "test_mc/brier"} <= set(events.Tags()["scalars"])
    assert {"test/reliability_diagram", "test/entropy_right_vs_wrong"} <= set(events.Tags()["images"])


@pytest.mark.slow
def test_validate_runs_the_validation_loops_of_the_checkpoint(tmp_path, checkpoint):
    result = run_train("validate", f"--ckpt_path={checkpoint}", "--trainer.limit_val_batches=2", *QUICK, root=None)
    tags = set(read_events(evaluation_dir(result, "validate", checkpoint.parent.parent)).Tags()["scalars"])
    assert {"validate-val/acc", "validate-train_eval/acc", "validate-gap/loss", "validate-gap/acc"} <= tags
    # None of them is drawn in the training charts of Custom Scalars (which match each regex at a tag's start).
    charts = [regex for category in LAYOUT.values() for _, regexes in category.values() for regex in regexes]
    assert not [tag for tag in tags for regex in charts if re.match(regex, tag)]
    assert not any(tag.startswith("hp/") for tag in tags)  # no HParams session in an evaluation


@pytest.mark.slow
def test_predict_writes_one_row_per_image_of_the_held_out_split(tmp_path, checkpoint):
    output = tmp_path / "not" / "yet" / "predictions.csv"  # folders that do not exist are created
    args = ["--model.mc_samples=3", "--data.batch_size=8", "--trainer.limit_predict_batches=2", f"--output={output}"]
    result = run_train("predict", f"--ckpt_path={checkpoint}", *args, *QUICK, root=None)
    assert str(output) in result.stdout
    evaluation_dir(
        result, "predict", checkpoint.parent.parent
    )  # "TensorBoard logs", not "Checkpoints and ...": none written
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
    assert "validate-val/acc" in read_events(earlier.parent / "validate_0").Tags()["scalars"]


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


# --- The checkpoint's classes: read before the parse, so that all their flags are accepted ----------------


class Parsed(Exception):
    """Raised with the parsed config where the CLI would start building the classes."""


class ParseOnly(DropoutLabCLI):
    def before_instantiate_classes(self) -> None:
        raise Parsed(self.run_config)


def parse(args: list[str]) -> Namespace:
    with pytest.raises(Parsed) as parsed:
        ParseOnly(args, run=True)
    return parsed.value.args[0]


def write_checkpoint(path: Path) -> Path:
    """A checkpoint as train.py writes them (hyperparameters of both classes), of a CNN on MNISTDataModule."""
    model = {"_class_path": "dropout_lab.CNNClassifier", "input_shape": (1, 28, 28), "num_classes": 10}
    model |= {"channels": [4], "hidden": 8, "conv_dropout": 0.1}
    data = {"_class_path": "dropout_lab.MNISTDataModule", "data_dir": "/old", "val_size": 1234, "batch_size": 16}
    saved = {"state_dict": {}, "loops": {}, "hyper_parameters": model, "datamodule_hyper_parameters": data}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**saved, "normalization": {"mean": [0.1307], "std": [0.3081]}}, path)
    return path


@pytest.mark.parametrize("ckpt", ["path", "last"])
def test_every_flag_of_the_checkpoints_classes_is_accepted_and_overrides_its_value(tmp_path, ckpt):
    path = write_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    flags = ["--model.conv_dropout=0.3", "--model.mc_samples=2", "--data.data_dir", "/moved"]
    given = path if ckpt == "path" else "last"
    config = parse(["test", f"--ckpt_path={given}", *flags, f"--trainer.default_root_dir={tmp_path}"])
    assert config.ckpt_path == str(path)
    assert config.model.class_path == "dropout_lab.CNNClassifier"
    model = config.model.init_args
    assert (model.conv_dropout, model.mc_samples, model.channels, model.hidden) == (0.3, 2, [4], 8)
    assert config.data.class_path == "dropout_lab.MNISTDataModule"
    data = config.data.init_args
    assert (data.data_dir, data.val_size, data.batch_size) == ("/moved", 1234, 16)


@pytest.mark.parametrize("subcommand", [[], ["fit"]])
@pytest.mark.parametrize("ckpt", ["path", "last", "auto"])
def test_a_resumed_fit_starts_from_the_checkpoints_classes_and_arguments(tmp_path, ckpt, subcommand):
    # A run trained with --model=CNNClassifier --model.conv_dropout=0.1 ... is resumed with --ckpt_path alone:
    # the defaults (MLPClassifier, dropout 0.5, MNIST5kDataModule) would make check_resumable refuse it.
    path = write_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    given = path if ckpt == "path" else ckpt
    args = [*subcommand, f"--ckpt_path={given}", "--model.lr=0.01", f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises(Parsed) as parsed:
        ParseOnly(args, run=bool(subcommand))
    config = parsed.value.args[0]
    assert config.model.class_path == "dropout_lab.CNNClassifier"
    model = config.model.init_args
    assert (model.conv_dropout, model.channels, model.hidden, model.lr) == (0.1, [4], 8, 0.01)  # lr: the flag's
    assert config.data.class_path == "dropout_lab.MNISTDataModule"
    assert (config.data.init_args.data_dir, config.data.init_args.val_size) == ("/old", 1234)


@pytest.mark.parametrize("subcommand", [[], ["fit"]])
@pytest.mark.parametrize("ckpt", ["path", "last"])
def test_a_ckpt_path_in_a_config_file_resumes_as_the_flag_does(tmp_path, ckpt, subcommand):
    path = write_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    resume = tmp_path / "resume.yaml"
    resume.write_text(f"ckpt_path: {path if ckpt == 'path' else 'last'}\ntrainer:\n  default_root_dir: {tmp_path}\n")
    with pytest.raises(Parsed) as parsed:
        ParseOnly([*subcommand, f"--config={resume}", "--model.lr=0.01"], run=bool(subcommand))
    config = parsed.value.args[0]
    assert config.model.class_path == "dropout_lab.CNNClassifier"  # not the default MLP, which check_resumable refuses
    model = config.model.init_args
    assert (model.conv_dropout, model.channels, model.hidden, model.lr) == (0.1, [4], 8, 0.01)
    assert (config.data.class_path, config.data.init_args.val_size) == ("dropout_lab.MNISTDataModule", 1234)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_an_evaluation_takes_the_class_of_a_checkpoint_named_in_a_config_file(tmp_path, subcommand):
    path = write_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    (tmp_path / "eval.yaml").write_text(f"ckpt_path: {path}\n")
    config = parse([subcommand, f"--config={tmp_path / 'eval.yaml'}", "--model.conv_dropout=0.3"])
    assert config.model.class_path == "dropout_lab.CNNClassifier"
    assert (config.model.init_args.conv_dropout, config.model.init_args.hidden) == (0.3, 8)  # the flag, the file's
    assert config.data.init_args.val_size == 1234


@pytest.mark.parametrize("run", [False, True])
def test_dict_args_are_parsed_as_a_config_file_would_be(tmp_path, run):
    settings = {"trainer": {"max_epochs": 1, "default_root_dir": str(tmp_path)}, "model": {"dropout": 0.3}}
    with pytest.raises(Parsed) as parsed:
        ParseOnly({"subcommand": "fit", "fit": settings} if run else settings, run=run)
    config = parsed.value.args[0]
    assert (config.trainer.max_epochs, config.model.init_args.dropout) == (1, 0.3)


def test_a_dict_with_ckpt_path_starts_from_the_checkpoints_classes(tmp_path):
    path = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(Parsed) as parsed:
        ParseOnly({"subcommand": "test", "test": {"ckpt_path": str(path)}}, run=True)
    assert parsed.value.args[0].model.class_path == "dropout_lab.CNNClassifier"


def test_a_new_run_with_ckpt_path_auto_and_no_run_yet_starts_from_the_defaults(tmp_path):
    with pytest.raises(Parsed) as parsed:
        ParseOnly(["--ckpt_path=auto", f"--trainer.default_root_dir={tmp_path}"])
    assert parsed.value.args[0].model.class_path == "dropout_lab.MLPClassifier"


def test_a_datamodule_named_on_the_command_line_replaces_the_checkpoints_and_takes_none_of_its_arguments(tmp_path):
    path = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    config = parse(["predict", f"--ckpt_path={path}", "--data=ImageFilesDataModule", "--data.paths=digits/*.png"])
    assert config.data.class_path == "dropout_lab.ImageFilesDataModule"
    data = config.data.init_args
    assert data.batch_size == 64  # its own default, not the checkpoint's 16 (jsonargparse #460's carry-over)
    assert (data.mean, data.std, data.input_shape, data.num_classes) == ([0.1307], [0.3081], (1, 28, 28), 10)


@pytest.mark.slow  # needs the fitted checkpoint
def test_evaluations_go_into_the_checkpoints_run_numbered_without_the_dirpath_warning(checkpoint, capsys, recwarn):
    run_dir = checkpoint.parent.parent
    before = {path.name for path in run_dir.iterdir()}
    args = [f"--ckpt_path={checkpoint}", "--trainer.limit_val_batches=1", "--trainer.limit_predict_batches=1", *QUICK]
    for subcommand in ("validate", "validate", "predict"):
        DropoutLabCLI([subcommand, *args], run=True)
    new = {path.name for path in run_dir.iterdir()} - before
    numbers = sorted(int(name.rpartition("_")[2]) for name in new if name.startswith("validate_"))
    assert len(numbers) == 2 and numbers[1] == numbers[0] + 1  # the second validate did not overwrite the first
    (predicted,) = [name for name in new if name.startswith("predict_")]
    assert (run_dir / predicted / "predictions.csv").is_file()  # the CSV's default place follows
    assert not any(name.startswith("version_") for name in new)
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message) or "callbacks" in str(w.message)]
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if "/" in line and "DataLoader" not in line]
    assert sum("gap/loss" in line for line in table) == 2  # once per validate (a line of its own), not per loader
    assert not any("hp/" in line for line in table)


class ParseAndPlace(DropoutLabCLI):
    """Parse, choose the evaluation's folder, then stop before anything is built or written."""

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        raise Parsed(self.run_config)


def test_evaluations_are_numbered_from_0_after_those_already_in_the_run(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    run_dir = checkpoint.parent.parent

    def folder(subcommand: str) -> Path:
        with pytest.raises(Parsed) as parsed:
            ParseAndPlace([subcommand, f"--ckpt_path={checkpoint}"], run=True)
        return Path(parsed.value.args[0].trainer.default_root_dir)

    assert folder("test") == run_dir / "test_0"
    (run_dir / "test_0").mkdir()
    assert folder("test") == run_dir / "test_1"
    assert folder("validate") == run_dir / "validate_0"


def test_a_checkpoint_outside_a_runs_checkpoints_folder_is_evaluated_beside_it(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "downloads" / "model.ckpt")
    with pytest.raises(Parsed) as parsed:
        ParseAndPlace(["test", f"--ckpt_path={checkpoint}"], run=True)
    assert Path(parsed.value.args[0].trainer.default_root_dir) == checkpoint.parent / "test_0"  # not tmp_path's


def test_an_evaluation_writes_into_the_default_root_dir_given_and_else_into_the_checkpoints_run(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    run_dir = checkpoint.parent.parent

    def placed(*flags: str) -> Namespace:
        with pytest.raises(Parsed) as parsed:
            ParseAndPlace(["test", f"--ckpt_path={checkpoint}", *flags], run=True)
        return parsed.value.args[0].trainer

    elsewhere = tmp_path / "elsewhere"
    trainer = placed(f"--trainer.default_root_dir={elsewhere}")
    assert trainer.default_root_dir == str(elsewhere / "test_0")
    assert (trainer.logger.init_args.save_dir, trainer.logger.init_args.version) == (str(elsewhere), "test_0")
    assert placed().default_root_dir == str(run_dir / "test_0")  # none given: the checkpoint's own run
    # A folder the run is inside (the one --ckpt_path=last searched) keeps the evaluation in the run.
    assert placed(f"--trainer.default_root_dir={tmp_path}").default_root_dir == str(run_dir / "test_0")


def test_validate_says_in_one_line_that_it_ignores_mc_samples(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    with pytest.raises(Parsed):
        ParseAndPlace(["validate", f"--ckpt_path={checkpoint}", "--model.mc_samples=10"], run=True)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "mc_samples" in line]
    assert "validate is deterministic" in line and "test --ckpt_path=... --model.mc_samples=10" in line


@pytest.mark.parametrize("command", ["test_with_mc", "fit_last"])
def test_a_command_reads_its_checkpoint_file_once(tmp_path, checkpoint, monkeypatch, command):
    # The CLI reads it to start from its classes and to check it; the Trainer's loads (test's deterministic and
    # MC loops, a fit's resume) take that copy (AtomicCheckpointIO.read) rather than the file again.
    if command == "fit_last":
        path = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(checkpoint.read_bytes())
        args = ["fit", "--ckpt_path=last", "--trainer.max_epochs=2", "--trainer.limit_val_batches=1"]
    else:
        path = checkpoint
        args = ["test", f"--ckpt_path={checkpoint}", "--model.mc_samples=2"]
    reads, load = [], torch.load

    def counting_load(f, *rest, **kwargs):
        reads.append(Path(f if isinstance(f, (str, Path)) else f.name).resolve())  # a path or an open file
        return load(f, *rest, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    limits = ["--trainer.limit_train_batches=1", "--trainer.limit_test_batches=1"]
    DropoutLabCLI([*args, *limits, f"--trainer.default_root_dir={tmp_path}"], run=True)
    assert reads.count(path.resolve()) == 1
