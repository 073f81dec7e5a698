"""python tune.py: the search space, bad input, trials as TensorBoard runs, pruning, failures, resuming, workers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, hparams_tab_columns, read_events, run_train, scalars
from tensorboard.plugins.hparams import plugin_data_pb2

from dropout_lab.tuning import SpaceError, TuneCLI, parse_entry, tune

# A trial of a few batches; every trial of these tests takes seconds.
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--model.hidden=[64]",
]
# In-process runs: LightningCLI would otherwise warn that pytest's own arguments are not tune.py's.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL


def run_tune(*args: str, root: Path) -> None:
    tune(TuneCLI([*args, f"--trainer.default_root_dir={root}"]))


def load_study(root: Path) -> optuna.Study:
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{root / 'optuna.db'}")


def tune_hparams(run_dir: Path) -> dict:
    """The tune/* entries of the run's HParams summary."""
    content = read_events(run_dir).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: value.string_value or value.number_value for key, value in hparams.items() if key.startswith("tune")}


def tune_process(*args: str, root: Path) -> subprocess.Popen:
    tests = str(ROOT / "tests")  # crash_callbacks
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(ROOT / "tune.py"), *TINY, *args, f"--trainer.default_root_dir={root}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    finally:
        process.kill()


@pytest.mark.parametrize(
    ("entry", "kind", "bounds"),
    [
        ("model.dropout=float:0.0:0.8", "float", (0.0, 0.8)),
        ("model.lr=log:1e-4:1e-2", "log", (1e-4, 1e-2)),
        ("data.batch_size=int:32:256", "int", (32, 256)),
        ("model.cosine=categorical:true:false", "categorical", (True, False)),
    ],
)
def test_search_space_entry_is_parsed(entry, kind, bounds):
    param = parse_entry(entry)
    assert (param.key, param.kind, tuple(param.corners())) == (entry.partition("=")[0], kind, bounds)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("model.dropout=float:0.9:0.1", "float needs LOW < HIGH, got LOW=0.9, HIGH=0.1"),
        ("model.dropout=flaot:0.1:0.9", "unknown type 'flaot' (did you mean float?)"),
        ("model.lr=log:0:1e-2", "log needs 0 < LOW < HIGH"),
        ("data.batch_size=int:32.5:256", "int needs whole numbers LOW < HIGH"),
        ("model.dropout=float:0.1", "float takes two numbers"),
        ("model.dropout", "write key=float:LOW:HIGH"),
    ],
)
def test_malformed_search_space_entry_is_refused(entry, message):
    with pytest.raises(SpaceError, match=re.escape(message)):
        parse_entry(entry)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tune.params=[model.dropuot=float:0:0.5]"], "did you mean --model.dropout?"),
        (["--tune.params=[model.dropout=float:0.9:0.1]"], "float needs LOW < HIGH"),
        (["--tune.n_trails=3"], "did you mean --tune.n_trials?"),
        (["--model=CNNClassifier", "--tune.params=[model.input_dropout=float:0:0.5]"], "did you mean --model.dropout?"),
        (["--tune.storage=afile/study.db"], "cannot open the study storage"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    Path("afile").touch()  # a file where the storage wants a folder
    with pytest.raises(SystemExit) as exit_:
        run_tune(*args, root=tmp_path / "out")
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no storage, no run folder


def test_a_metric_of_the_other_direction_does_not_join_an_existing_study(tmp_path, capsys):
    optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    with pytest.raises(SystemExit):
        run_tune("--tune.metric=val/loss", root=tmp_path)
    assert "was created to maximize its metric, and this --tune.metric would be minimized" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_search_writes_trials_runs_and_a_best_config_that_train_py_reproduces(tmp_path, capsys):
    run_tune(*TINY, "--tune.n_trials=3", root=tmp_path)
    out = capsys.readouterr().out

    trials = load_study(tmp_path).trials
    assert [(t.number, t.state) for t in trials] == [(0, COMPLETE), (1, COMPLETE), (2, COMPLETE)]
    assert all(set(t.params) == {"model.dropout", "model.input_dropout"} for t in trials)
    for trial in trials:
        run_dir = tmp_path / "tune" / f"version_{trial.number}"
        assert trial.user_attrs["run"] == str(run_dir) and trial.user_attrs["epochs"] == 1
        assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "config.yaml").exists()
        assert tune_hparams(run_dir) == {"tune/trial": trial.number, "tune/state": "COMPLETE"}
        events = read_events(run_dir)
        assert hparams_tab_columns(events) == ["dropout", "input_dropout", "lr", "model", "seed_everything"]
        assert "gap/loss" in events.Tags()["scalars"]
        assert scalars(events, "val/acc")[-1][1] == pytest.approx(trial.value)

    best = max(trials, key=lambda t: t.value)
    assert f"Best: trial {best.number}, val/acc={best.value:.4f}" in out
    config = tmp_path / "tune" / "best_config.yaml"
    assert f"dropout: {best.params['model.dropout']}" in config.read_text()
    run_train("--config", str(config), root=tmp_path / "again")
    (again,) = (tmp_path / "again" / "lightning_logs").iterdir()
    assert scalars(read_events(again), "val/acc")[-1][1] == pytest.approx(best.value, abs=1e-6)


@pytest.mark.slow
def test_pruning_stops_a_trial_worse_than_the_median_early(tmp_path, capsys):
    # Five finished trials that reached 0.9 at every epoch (the median pruner waits for five).
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={0: 0.9, 1: 0.9, 2: 0.9}))

    run_tune(*TINY, "--trainer.max_epochs=3", "--model.lr=1e-7", "--tune.n_trials=6", root=tmp_path)

    trial = load_study(tmp_path).trials[5]  # a learning rate far too small to learn anything
    assert trial.state == PRUNED and trial.user_attrs["epochs"] == 1
    assert "Trial 5 pruned after epoch 1: val/acc=" in capsys.readouterr().out
    run_dir = tmp_path / "tune" / "version_5"
    assert tune_hparams(run_dir) == {"tune/trial": 5, "tune/state": "PRUNED"}
    assert [step for step, _ in scalars(read_events(run_dir), "val/acc")] == [1]


@pytest.mark.slow
def test_a_failed_trial_is_recorded_with_its_reason_and_the_search_goes_on(tmp_path):
    poison = ["--trainer.callbacks+=crash_callbacks.PoisonWeightsAtEpochStart", "--trainer.callbacks.epoch=0"]
    run_tune(*TINY, *poison, "--tune.n_trials=2", root=tmp_path)

    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [FAIL, FAIL]
    assert all("FloatingPointError: the training loss became nan" in t.user_attrs["fail_reason"] for t in trials)
    assert tune_hparams(tmp_path / "tune" / "version_1") == {"tune/trial": 1, "tune/state": "FAIL"}


@pytest.mark.slow
def test_an_interrupted_search_keeps_its_finished_trials_and_continues(tmp_path):
    killed = tune_process("--tune.n_trials=3", "--trainer.callbacks+=crash_callbacks.KillInRun", root=tmp_path)
    finish(killed)
    assert killed.returncode == -9
    first = load_study(tmp_path).trials
    assert [t.state for t in first] == [COMPLETE, optuna.trial.TrialState.RUNNING]

    again = tune_process("--tune.n_trials=3", root=tmp_path)
    out = finish(again)
    assert again.returncode == 0, out
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [COMPLETE, FAIL, COMPLETE, COMPLETE]  # the killed trial runs again
    assert trials[0].value == first[0].value and trials[0].datetime_complete == first[0].datetime_complete
    assert "2 of 3 trials already finished or running" in out  # the killed one, until found dead
    assert sorted(p.name for p in (tmp_path / "tune").glob("version_*")) == [f"version_{n}" for n in range(4)]


@pytest.mark.slow
def test_two_workers_share_one_study_without_losing_or_repeating_a_trial(tmp_path):
    workers = [tune_process("--tune.n_trials=4", "--trainer.max_epochs=2", root=tmp_path) for _ in range(2)]
    outputs = [finish(worker) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs

    trials = load_study(tmp_path).trials
    assert [(t.number, t.state) for t in trials] == [(n, COMPLETE) for n in range(4)]
    ran = [{int(number) for number in re.findall(r"^Trial (\d+):", out, re.MULTILINE)} for out in outputs]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == {0, 1, 2, 3} and all(ran)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    for trial in trials:
        assert len(list((tmp_path / "tune" / f"version_{trial.number}").glob("config*.yaml"))) == 1
