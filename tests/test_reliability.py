"""Bad input is refused clearly before anything is written; a crash or a resume loses nothing."""

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import QUICK, ROOT, only_run_dir, read_events, run_train
from lightning.pytorch.trainer.states import TrainerFn

from dropout_lab import CNNClassifier, MLPClassifier, MNIST5kDataModule
from dropout_lab.checkpointing import (
    AtomicCheckpointIO,
    RNGState,
    check_resumable,
    find_last_checkpoint,
    load_checked,
    rng_states,
    safe_load,
    seed_dropout_stream,
    set_rng_states,
)

SMALL = [*QUICK, "--model.hidden=[32]"]  # a small MLP: checkpoints of kilobytes, not 22 MB


def crash(callback: str) -> str:
    """The flag that adds a callback of tests/crash_callbacks.py to a train.py run."""
    return f"--trainer.callbacks+=crash_callbacks.{callback}"


@pytest.fixture
def crash_callbacks_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))


def last_ckpt(root: Path) -> Path:
    (path,) = root.glob("lightning_logs/*/checkpoints/last.ckpt")
    return path


def write_cnn_checkpoint(path: Path) -> Path:
    model = CNNClassifier(channels=[4], hidden=8)
    hparams = {"_class_path": "dropout_lab.CNNClassifier", **model.hparams}  # as LightningCLI saves them
    torch.save({"state_dict": model.state_dict(), "loops": {}, "hyper_parameters": hparams}, path)
    return path


class RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- Bad input: one line that says what is wrong and what to do, and no run folder ----------------


def yaml_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_INPUT = {
    # p outside [0, 1], for every dropout argument of both models: nets.py's check_p, shown unwrapped
    "mlp_dropout": (["--model.dropout=1.5"], ["dropout is the probability", "0 <= dropout <= 1, got 1.5"]),
    "mlp_input_dropout": (["--model.input_dropout=-0.1"], ["0 <= input_dropout <= 1, got -0.1"]),
    "cnn_dropout": (["--model=CNNClassifier", "--model.dropout=2"], ["0 <= dropout <= 1, got 2"]),
    "cnn_conv_dropout": (["--model=CNNClassifier", "--model.conv_dropout=-1"], ["0 <= conv_dropout <= 1, got -1"]),
    # not a number: jsonargparse's own type error
    "dropout_not_a_number": (["--model.dropout=abc"], ["--model.dropout: Expected a <class 'float'>. Got value: abc"]),
    "wrong_type": (["--trainer.max_epochs=abc"], ["error: --trainer.max_epochs=abc: expected int or null"]),
    # unknown keys, with the closest valid one
    "unknown_model_key": (["--model.dropuot=0.3"], ["did you mean --model.dropout?"]),
    "unknown_cnn_key": (["--model=CNNClassifier", "--model.conv_dropuot=0.3"], ["did you mean --model.conv_dropout?"]),
    "unknown_trainer_key": (["--trainer.max_epohs=3"], ["did you mean --trainer.max_epochs?"]),
    "unknown_top_level_key": (["--chkpt_path=x"], ["did you mean --ckpt_path?"]),
    "unknown_key_in_yaml": (
        ["--config", "{yaml}"],
        ["did you mean --model.dropout? (in a config file: model.init_args.dropout)"],
    ),
    "config_file_missing": (["--config", "configs/no_such_file.yaml"], ["File does not exist", "no_such_file.yaml"]),
    "config_file_not_yaml": (["--config", "{bad_yaml}"], ["Problems parsing config"]),
    # the DataModule's own checks (data/base.py), shown unwrapped
    "batch_size_zero": (["--data.batch_size=0"], ["batch_size must be a positive integer, got 0"]),
    "val_size_negative": (["--data.val_size=-5"], ["val_size must be a positive number of images, got -5"]),
    # devices this machine does not have
    "gpu_on_cpu_machine": (["--trainer.accelerator=gpu"], ["--trainer.accelerator=gpu needs a CUDA GPU"]),
    "more_cpu_processes_than_cores": (["--trainer.devices=64"], ["--trainer.devices=64 would start 64", "cores"]),
    # checkpoints that cannot be resumed
    "ckpt_missing": (["--ckpt_path=no_such.ckpt"], ["--ckpt_path=no_such.ckpt: no such file"]),
    "ckpt_last_without_runs": (["--ckpt_path=last"], ["--ckpt_path=last found no last.ckpt under"]),
    "ckpt_with_other_model_arguments": (
        ["--model=CNNClassifier", "--model.channels=[4]", "--model.hidden=8", "--model.dropout=0.7"]
        + ["--ckpt_path={cnn_ckpt}"],
        ["model.dropout: 0.5 in the checkpoint, 0.7 now", "resume with the checkpoint's values"],
    ),
    "ckpt_of_the_other_model": (
        ["--model=MLPClassifier", "--ckpt_path={cnn_ckpt}"],  # without --model, the checkpoint's class is taken
        [
            "holds weights of dropout_lab.CNNClassifier that do not fit this MLPClassifier",
            "missing net.layers.2.weight",
        ],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_stops_before_anything_is_written(tmp_path, case):
    if case == "gpu_on_cpu_machine" and torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    args, messages = BAD_INPUT[case]
    files = {
        "yaml": yaml_file(tmp_path, "typo.yaml", "model:\n  init_args:\n    dropuot: 0.3\n"),
        "bad_yaml": yaml_file(tmp_path, "invalid.yaml", "model: [unclosed\n"),
        "cnn_ckpt": write_cnn_checkpoint(tmp_path / "cnn.ckpt"),
    }
    result = run_train(*[arg.format(**files) for arg in args], *QUICK, root=tmp_path / "runs", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    for message in messages:
        assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # no empty run folder left behind


@pytest.mark.slow
def test_val_size_larger_than_the_data_is_refused_before_training(tmp_path):
    # The DataModule knows its size before loading, so nothing is written (see test_cli_guidance.py).
    result = run_train("--data.val_size=100000", *SMALL, root=tmp_path / "runs", check=False)
    assert result.returncode == 2
    assert "val_size=100000 cannot be held out of 4500" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_truncated_or_corrupt_checkpoint_is_refused_with_the_reason(tmp_path):
    good = write_cnn_checkpoint(tmp_path / "good.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    model = CNNClassifier(channels=[4], hidden=8)
    with pytest.raises(ValueError, match="cannot be loaded: it is truncated, corrupt"):
        check_resumable(truncated, model, None)
    with pytest.raises(ValueError, match="garbage.ckpt is not a checkpoint"):
        check_resumable(garbage, model, None)
    check_resumable(good, model, None)  # and a whole one passes


def test_a_file_that_is_not_a_checkpoint_is_called_so_in_one_line_without_torchs_advice():
    with pytest.raises(ValueError) as error:
        load_checked(ROOT / "README.md")
    (line,) = str(error.value).splitlines()
    assert "README.md is not a checkpoint" in line
    assert "weights_only" not in line and "cannot be loaded" not in line


def test_resuming_with_other_data_arguments_is_refused(tmp_path):
    model, data = CNNClassifier(channels=[4], hidden=8), MNIST5kDataModule(seed=0)
    path = tmp_path / "run.ckpt"
    state = {"state_dict": model.state_dict(), "loops": {}, "datamodule_hyper_parameters": dict(data.hparams)}
    torch.save(state, path)
    check_resumable(path, model, MNIST5kDataModule(seed=0))
    with pytest.raises(ValueError, match="data.seed: 0 in the checkpoint, 1 now"):
        check_resumable(path, model, MNIST5kDataModule(seed=1))
    # With augmentation, num_workers decides which process draws the crops: not only speed.
    with pytest.raises(ValueError, match="data.num_workers: 0 in the checkpoint, 2 now"):
        check_resumable(path, model, MNIST5kDataModule(seed=0, num_workers=2))


def test_resuming_with_other_model_arguments_is_refused_with_each_old_and_new_value(tmp_path):
    path = write_cnn_checkpoint(tmp_path / "run.ckpt")  # dropout 0.5, lr 0.001
    with pytest.raises(ValueError) as error:
        check_resumable(path, CNNClassifier(channels=[4], hidden=8, dropout=0.2, lr=0.1), None)
    assert str(error.value).splitlines() == [
        "Resuming with other model arguments than the run that wrote the checkpoint (model.dropout: 0.5 in the "
        "checkpoint, 0.2 now; model.lr: 0.001 in the checkpoint, 0.1 now) would not continue that run: resume with "
        "the checkpoint's values, or start a new run without --ckpt_path."
    ]


def test_resuming_with_other_mc_samples_or_compile_is_allowed(tmp_path):
    # Neither changes what is trained; a longer run (--trainer.max_epochs) is not a model argument at all.
    path = write_cnn_checkpoint(tmp_path / "run.ckpt")
    check_resumable(path, CNNClassifier(channels=(4,), hidden=8, mc_samples=30, compile=True), None)


class OtherDigits(MNIST5kDataModule):
    """Same arguments, other data."""


def test_resuming_with_another_datamodule_class_is_refused(tmp_path):
    model, data = CNNClassifier(channels=[4], hidden=8), MNIST5kDataModule()
    path = tmp_path / "run.ckpt"
    hparams = {"_class_path": "dropout_lab.MNIST5kDataModule", **data.hparams}  # as LightningCLI saves them
    torch.save({"state_dict": model.state_dict(), "loops": {}, "datamodule_hyper_parameters": hparams}, path)
    check_resumable(path, model, MNIST5kDataModule())
    with pytest.raises(ValueError, match="another DataModule .* dropout_lab.MNIST5kDataModule in the checkpoint"):
        check_resumable(path, model, OtherDigits())


def test_resuming_from_the_middle_of_an_epoch_is_warned_about(tmp_path):
    model = CNNClassifier(channels=[4], hidden=8)
    path = tmp_path / "step.ckpt"
    loops = {"fit_loop": {"epoch_loop.batch_progress": {"is_last_batch": False}}}
    torch.save({"state_dict": model.state_dict(), "loops": loops, "epoch": 1, "global_step": 6}, path)
    with pytest.warns(UserWarning, match="written in the middle of epoch 1 .* continue exactly"):
        check_resumable(path, model, None)


def test_find_last_checkpoint_picks_the_newest_run(tmp_path):
    for version, mtime in (("version_0", 2000), ("version_1", 1000), ("version_2", 3000), ("version_3", 1500)):
        path = tmp_path / version / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    assert find_last_checkpoint(tmp_path) == tmp_path / "version_2" / "checkpoints" / "last.ckpt"


# --- Random streams: distinct per DDP rank, saved and restored per rank ---------------------------


def test_dropout_streams_are_distinct_per_seed_and_rank_and_not_the_weights_stream():
    first_draws = {}
    for seed in range(6):
        torch.manual_seed(seed)
        weights_stream = torch.rand(8)
        for rank in range(4):
            seed_dropout_stream(seed, rank)
            draws = torch.rand(8)
            assert not torch.equal(draws, weights_stream)
            first_draws[seed, rank] = draws
    # seed + rank would give rank r at seed s the stream of rank r - 1 at seed s + 1.
    assert len({tuple(d.tolist()) for d in first_draws.values()}) == len(first_draws)


def rank_states(world_size: int) -> dict:
    """An RNGState checkpoint entry as ``world_size`` ranks, each with a stream of its own, would write it."""
    ranks = []
    for rank in range(world_size):
        seed_dropout_stream(0, rank)
        ranks.append(rng_states())
    return {"world_size": world_size, "ranks": ranks}


def resumed_draws(saved: dict, rank: int, world_size: int) -> torch.Tensor:
    callback = RNGState()
    callback.rank, callback.world_size = rank, world_size
    torch.manual_seed(123)  # whatever the resumed process drew before
    callback.load_state_dict(saved)
    return torch.rand(4)


def draws_after(states: dict) -> torch.Tensor:
    torch.set_rng_state(states["torch"])
    return torch.rand(4)


def test_each_rank_resumes_the_stream_it_saved(capsys):
    saved = rank_states(2)
    for rank in range(2):
        assert torch.equal(resumed_draws(saved, rank, 2), draws_after(saved["ranks"][rank]))
    assert capsys.readouterr().out == ""


def test_another_number_of_processes_resumes_with_one_line_and_distinct_streams(capsys):
    saved = rank_states(2)
    draws = [resumed_draws(saved, rank, 3) for rank in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "The checkpoint was written by 2 processes and 3 resume it: the dropout masks and batch orders will "
        "differ from those of an uninterrupted run."
    ]
    assert torch.equal(resumed_draws(saved, 0, 1), draws_after(saved["ranks"][0]))  # one process: rank 0's stream


@pytest.mark.parametrize("fn", [TrainerFn.VALIDATING, TrainerFn.TESTING, TrainerFn.PREDICTING])
def test_evaluating_a_checkpoint_keeps_the_seeded_streams_and_says_nothing_about_processes(fn, capsys):
    callback = RNGState()
    callback.setup(SimpleNamespace(global_rank=0, world_size=1, state=SimpleNamespace(fn=fn)), None, fn.value)
    saved = rank_states(2)  # a checkpoint of a 2-process run
    torch.manual_seed(123)  # what --seed_everything set
    expected = torch.rand(4)
    torch.manual_seed(123)
    callback.load_state_dict(saved)
    assert torch.equal(torch.rand(4), expected)
    assert capsys.readouterr().out == ""


def test_cuda_states_are_restored_only_to_the_gpus_there_are(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(device))
    states = {**rng_states(), "torch.cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}  # written with 2 GPUs
    with pytest.warns(UserWarning, match="random states of 2 GPUs and this process sees 1"):
        set_rng_states(states)
    assert restored == [0]


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_checkpoints(tmp_path, crash_callbacks_importable):
    result = run_train(
        *SMALL,
        "--trainer.max_epochs=3",
        crash("PoisonWeightsAtEpochStart"),
        root=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "FloatingPointError: the training loss became nan in epoch 1, batch 0 (global step 4)" in result.stderr
    checkpoint = safe_load(last_ckpt(tmp_path))
    assert checkpoint["epoch"] == 0  # epoch 0's checkpoint, not overwritten by the broken model
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values())


# --- Resuming is exact ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    run_train(*SMALL, "--trainer.max_epochs=4", root=root)
    return root


@pytest.mark.slow
def test_run_killed_after_epoch_2_resumes_to_the_same_weights_and_the_same_log(
    tmp_path, uninterrupted, crash_callbacks_importable
):
    killed = run_train(*SMALL, "--trainer.max_epochs=4", crash("KillAtEpochStart"), root=tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert safe_load(last_ckpt(tmp_path))["epoch"] == 1  # stopped right after epoch 2 of 4 (0-based 1)

    resumed = run_train(*SMALL, "--trainer.max_epochs=4", "--ckpt_path=last", root=tmp_path)
    assert f"Resuming {last_ckpt(tmp_path).parents[1]}" in resumed.stdout

    expected = safe_load(last_ckpt(uninterrupted))["state_dict"]
    weights = safe_load(last_ckpt(tmp_path))["state_dict"]
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], expected[key]) for key in expected)

    # One TensorBoard run, continued: each tag's steps increase across the two processes' event files.
    run_dir = only_run_dir(tmp_path)
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.yaml", "config_resume_1.yaml"]
    steps: dict[str, list[int]] = {}
    for events_file in events_files(run_dir):
        events = read_events(events_file)
        for tag in events.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in events.Scalars(tag))
    # hp/* is written at step 0 by TensorBoardLayout at every fit start, the resumed one included.
    # "epoch" is logged twice per step by Lightning itself (with train and with val metrics).
    for tag, logged in steps.items():
        if not tag.startswith("hp/") and tag != "epoch":
            assert logged == sorted(set(logged)), f"{tag}: {logged}"
    assert steps["train/loss"][-1] == 15 and steps["val/acc"][-1] == 15
    # The layout and the HParams summary are in the first process's events only, not written again.
    first, *later = events_files(run_dir)  # names end in .<pid>.<n>: the test writes one more file
    first_pid = first.name.split(".")[-2]
    resumed = [read_events(path) for path in later if path.name.split(".")[-2] != first_pid]
    assert resumed and "custom_scalars__config__" in read_events(first).Tags()["tensors"]
    read_events(first).PluginTagToContent("hparams")
    for events in resumed:
        assert "custom_scalars__config__" not in events.Tags()["tensors"]
        with pytest.raises(KeyError):
            events.PluginTagToContent("hparams")


def events_files(run_dir: Path) -> list[Path]:
    """The run's event files, one per process that wrote into it, oldest first."""
    return sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)


def assert_same_weights(root: Path, reference: Path) -> None:
    expected = safe_load(last_ckpt(reference))["state_dict"]
    weights = safe_load(last_ckpt(root))["state_dict"]
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], expected[key]) for key in expected)


@pytest.mark.slow
def test_resume_with_a_dataloader_worker_is_exact_and_workers_change_nothing(
    tmp_path, uninterrupted, crash_callbacks_importable
):
    # Persistent workers drew the workers' base seed once per process: once more in a resumed run.
    workers = [*SMALL, "--trainer.max_epochs=4", "--data.num_workers=1"]
    killed = run_train(*workers, crash("KillAtEpochStart"), root=tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL
    run_train(*workers, "--ckpt_path=last", root=tmp_path)
    assert_same_weights(tmp_path, uninterrupted)  # which ran with num_workers=0


@pytest.mark.slow
def test_a_run_on_one_fold_killed_and_resumed_ends_with_the_weights_of_one_never_stopped(
    tmp_path, crash_callbacks_importable
):
    fold = [*SMALL, "--trainer.max_epochs=3", "--data.folds=5", "--data.fold=3"]
    run_train(*fold, root=tmp_path / "uninterrupted")
    killed = run_train(*fold, crash("KillAtEpochStart"), root=tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL
    run_train(*fold, "--ckpt_path=last", root=tmp_path)
    assert_same_weights(tmp_path, tmp_path / "uninterrupted")
    # Not by chance: another fold trains other weights.
    run_train(*SMALL, "--trainer.max_epochs=3", "--data.folds=5", "--data.fold=1", root=tmp_path / "other")
    other, resumed = (safe_load(last_ckpt(root))["state_dict"] for root in (tmp_path / "other", tmp_path))
    assert not all(torch.equal(other[key], resumed[key]) for key in resumed)


# Validation twice an epoch, every second epoch, over an odd number of epochs: the "last" checkpoint
# must still be written at the end of every epoch, and only there.
OFF_EPOCH_VALIDATION = [
    *SMALL,
    "--trainer.max_epochs=3",
    "--trainer.val_check_interval=0.5",
    "--trainer.check_val_every_n_epoch=2",
]


@pytest.mark.slow
def test_last_ckpt_is_written_at_every_epoch_end_whatever_the_validation_schedule(tmp_path, crash_callbacks_importable):
    run_train(*OFF_EPOCH_VALIDATION, root=tmp_path / "uninterrupted")
    assert safe_load(last_ckpt(tmp_path / "uninterrupted"))["epoch"] == 2  # the last epoch, not validated

    # Killed in epoch 1 right after its mid-epoch validation (4 batches an epoch, global step 6).
    killed = run_train(*OFF_EPOCH_VALIDATION, crash("KillAtStep"), root=tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL
    checkpoint = safe_load(last_ckpt(tmp_path))
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 4)  # epoch 0's end, though not validated
    run_train(*OFF_EPOCH_VALIDATION, "--ckpt_path=last", root=tmp_path)
    assert_same_weights(tmp_path, tmp_path / "uninterrupted")


DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def run_ddp(*args: str, root: Path, expect: int = 0):
    result = run_train(*args, *DDP, root=root, check=False)
    # gloo was seen to abort (SIGABRT) at exit after all the work was done; the weights are on disk then.
    finished = result.returncode == -signal.SIGABRT and "tensorboard --logdir" in result.stdout
    assert result.returncode == expect or (expect == 0 and finished), result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_ddp_run_killed_after_epoch_2_resumes_to_the_same_weights(tmp_path, crash_callbacks_importable):
    args = [*SMALL, "--trainer.max_epochs=4"]
    run_ddp(*args, root=tmp_path / "uninterrupted")
    run_ddp(*args, crash("KillAtEpochStart"), root=tmp_path, expect=-signal.SIGKILL)
    saved = safe_load(last_ckpt(tmp_path))
    assert saved["epoch"] == 1
    (rng,) = (state for key, state in saved["callbacks"].items() if key.startswith("RNGState"))
    assert rng["world_size"] == 2 and not torch.equal(rng["ranks"][0]["torch"], rng["ranks"][1]["torch"])
    run_ddp(*args, "--ckpt_path=last", root=tmp_path)
    assert_same_weights(tmp_path, tmp_path / "uninterrupted")


@pytest.mark.slow
def test_kill_while_saving_leaves_the_previous_last_ckpt_intact(tmp_path, crash_callbacks_importable):
    # save_top_k=0: only last.ckpt is written, so the kill hits the save of last.ckpt itself.
    result = run_train(*SMALL, "--checkpoint.save_top_k=0", crash("KillWhileSaving"), root=tmp_path, check=False)
    assert result.returncode == -signal.SIGKILL
    checkpoint = safe_load(last_ckpt(tmp_path))  # loads: not truncated
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 4)  # epoch 0's, as before the kill


def test_atomic_save_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert safe_load(path) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# --- Loading untrusted files ---------------------------------------------------------------------


@pytest.fixture
def evil_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    model = MLPClassifier(hidden=[8])
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": model.state_dict(), "loops": {}, "payload": RunsCodeWhenUnpickled(marker)}, path)
    return path, marker


def test_safe_load_refuses_a_checkpoint_that_would_run_code(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(Exception, match="Weights only load failed"):
        safe_load(path)
    with pytest.raises(ValueError, match="objects that would run code"):
        check_resumable(path, MLPClassifier(hidden=[8]), None)
    assert not marker.exists()


@pytest.mark.parametrize("plugins", [[AtomicCheckpointIO()], None], ids=["ours", "lightning_default"])
def test_trainer_fit_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, evil_checkpoint, plugins):
    path, marker = evil_checkpoint
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        plugins=plugins,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
    )
    with pytest.raises(Exception, match="Weights only load failed"):
        trainer.fit(MLPClassifier(hidden=[8]), MNIST5kDataModule(), ckpt_path=path)
    assert not marker.exists()


@pytest.mark.slow
def test_train_py_refuses_a_checkpoint_that_would_run_code(tmp_path, evil_checkpoint):
    path, marker = evil_checkpoint
    result = run_train(*SMALL, f"--ckpt_path={path}", root=tmp_path / "runs", check=False)
    assert result.returncode == 2
    assert "cannot be loaded" in result.stderr and "Weights only load failed" in result.stderr
    assert not marker.exists()
