"""What the command line tells a user: --help, class choices, early refusals, the HParams table, own models."""

import os
import re

import pytest
from conftest import QUICK, ROOT, only_run_dir, read_events, run_train, scalars

from dropout_lab import MLPClassifier, MNIST5kDataModule
from dropout_lab.callbacks import hparams_table
from dropout_lab.cli import DropoutLabCLI

FULL_ERRORS = "DROPOUT_LAB_FULL_ERRORS"  # the variable the error line names


def cli_exit(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI's parsing and instantiation in this process; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        DropoutLabCLI(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_help_starts_with_the_flags_people_change_most(capsys):
    code, out, _ = cli_exit(["--help"], capsys)
    assert code == 0
    opening = "\n".join(out.splitlines()[:15])
    for flag in ("--model=", "--model.dropout", "--data=", "--model.help CNNClassifier"):
        assert flag in opening
    assert "--trainer.max_epochs" in out  # LightningCLI's full help follows
    assert "--optimizer" not in out and "--lr_scheduler" not in out  # not offered: see README


@pytest.mark.parametrize(
    ("section", "choices"), [("model", "CNNClassifier, MLPClassifier"), ("data", "MNIST5kDataModule, MNISTDataModule")]
)
def test_help_of_a_section_without_a_class_lists_the_classes(capsys, section, choices):
    code, out, _ = cli_exit([f"--{section}.help"], capsys)
    assert code == 0
    assert choices in out
    assert "dropout_lab.Classifier" not in out and "--model.num_classes" not in out  # not the abstract base


@pytest.mark.parametrize(
    ("arg", "closest", "valid"),
    [
        ("--data=MNISTDatModule", "did you mean --data=MNISTDataModule?", "CIFAR10DataModule, FashionMNISTDataModule"),
        ("--model=CNNClasifier", "did you mean --model=CNNClassifier?", "CNNClassifier, MLPClassifier"),
        ("--data=NoSuchData", "", "ImageFilesDataModule, MNIST5kDataModule, MNISTDataModule"),
    ],
)
def test_unknown_class_lists_the_valid_ones_and_the_closest(tmp_path, capsys, arg, closest, valid):
    code, _, err = cli_exit([arg, f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 2
    assert closest in err and valid in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "useful"),
    [
        (["--model.dropuot=0.3"], "Unknown key '--model.dropuot': did you mean --model.dropout?"),
        (["--model.dropout=abc"], "--model.dropout: Expected a <class 'float'>. Got value: abc"),
        (["--trainer.max_epochs=two"], "--trainer.max_epochs=two: expected int or null"),
        (["--seed_everything=abc"], "--seed_everything=abc: expected bool or int"),
        (["tset", "--ckpt_path=x"], "Unknown subcommand 'tset': did you mean test?"),
    ],
)
def test_a_mistyped_flag_or_subcommand_gets_the_useful_line_alone(tmp_path, capsys, monkeypatch, args, useful):
    monkeypatch.delenv(FULL_ERRORS, raising=False)
    code, _, err = cli_exit([*args, f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: {useful}" + err.strip().partition(useful)[2]]
    assert f"({FULL_ERRORS}=1 shows the parser's whole message)" in err  # says how to see the rest
    monkeypatch.setenv(FULL_ERRORS, "1")
    code, _, err = cli_exit([*args, f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 2 and useful in err and "usage:" in err  # jsonargparse's whole message, the hint after it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.val_size=999999"], "val_size=999999 cannot be held out of 4500 examples"),
        (["--data.test_size=5000"], "test_size=5000 cannot be held out of 5000 examples"),
        (["--data.test_size=4000", "--data.val_size=1000"], "val_size=1000 cannot be held out of 1000 examples"),
        (["--data=MNISTDataModule", "--data.val_size=60000"], "val_size=60000 cannot be held out of 60000"),
        (["--model.dropout=1"], "dropout=1 drops every unit: the layers after it see only zeros"),
        (["--model=CNNClassifier", "--model.conv_dropout=1.0"], "conv_dropout=1 drops every unit"),
    ],
)
def test_impossible_split_is_refused_before_any_folder_is_made(tmp_path, capsys, args, message):
    code, _, err = cli_exit([*args, f"--trainer.default_root_dir={tmp_path / 'runs'}"], capsys)
    assert code == 2
    assert message in err
    assert not (tmp_path / "runs").exists()


def test_hparams_table_leads_with_what_runs_are_compared_by():
    model, data = MLPClassifier(dropout=0.3), MNIST5kDataModule()
    model.hparams["_class_path"] = "dropout_lab.MLPClassifier"  # as LightningCLI adds it
    model.hparams["seed"] = 7  # a key the DataModule has too
    table = hparams_table(model, data)
    shown = ["model", "dropout", "input_dropout", "learn_dropout", "dropout_schedule"]  # HPARAMS_SHOWN
    assert list(table)[:7] == [*shown, "lr", "seed_everything"]
    assert table["dropout"] == 0.3 and table["model.seed"] == 7 and table["data.seed"] == 0
    assert "seed" not in table and not any(key.startswith("_") for key in table)


README_MODEL = re.search(r"```python\n(\s*# my_module\.py.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.slow
def test_readme_own_model_gets_every_dropout_feature_from_the_block_as_written(tmp_path, monkeypatch):
    code = "\n".join(line[2:] for line in README_MODEL.group(1).splitlines())  # the block is indented 2
    (tmp_path / "my_module.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    mine = ["--model=my_module.MyClassifier", "--model.dropout=0.3", "--trainer.log_every_n_steps=1", *QUICK]

    help_text = run_train("--model.help", "my_module.MyClassifier", root=None).stdout
    for flag in ("--model.hidden", "--model.learn_dropout", "--model.dropout_schedule", "--model.mc_samples"):
        assert flag in help_text  # its own flags and Classifier's, each with its docstring
    assert "learn every dropout rate (Concrete dropout)" in help_text

    late = run_train(*mine, "--model.dropout_schedule=late", "--model.dropout_cutoff_epoch=1", root=tmp_path / "late")
    assert "test/acc" in late.stdout
    rates = scalars(read_events(only_run_dir(tmp_path / "late")), "dropout/p/hidden1")
    assert rates[0] == (0, 0.0) and rates[-1][1] == pytest.approx(0.3)  # off in epoch 0, on from the cutoff
    config = (only_run_dir(tmp_path / "late") / "config.yaml").read_text()
    assert "class_path: my_module.MyClassifier" in config and "dropout_schedule: late" in config

    run_train(*mine, "--model.learn_dropout=true", root=tmp_path / "learned")
    run_dir = only_run_dir(tmp_path / "learned")
    rates = scalars(read_events(run_dir), "dropout/p/hidden1")
    assert rates[0] == (0, pytest.approx(0.3)) and abs(rates[-1][1] - 0.3) > 1e-3  # the rate moved

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    tested = run_train("test", f"--ckpt_path={checkpoint}", "--model.mc_samples=5", *QUICK[3:4], root=None)
    assert "test_mc/acc" in tested.stdout and "test/acc" in tested.stdout
