"""python tune.py: the search space, bad input, trials as TensorBoard runs, pruning, failures, resuming, workers,
and the grid over seeds (its summary and figure: test_sweep_summary.py)."""

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, hparams_tab_columns, read_events, run_train, scalars
from tensorboard.plugins.hparams import plugin_data_pb2

from dropout_lab import tuning
from dropout_lab.cli import DropoutLabCLI
from dropout_lab.tuning import (
    VALIDATION_METRICS,
    SpaceError,
    TuneCLI,
    grid_points,
    grid_space,
    metric_direction,
    parse_entry,
    run_name,
    tune,
    user_config,
)

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
        (
            ["--tune.metric=val/accuracy"],
            "--tune.metric=val/accuracy is not logged at validation (did you mean val/acc?)",
        ),
        (
            ["--tune.sampler=grid", "--tune.params=[model.dropout=float:0:0.5]"],
            "--tune.sampler=grid runs listed values, and model.dropout=float:0:0.5 is a range",
        ),
        (["--tune.sampler=grid"], "--tune.sampler=grid runs listed values: --tune.params="),
        (
            ["--tune.sampler=grid", "--tune.params=[model.dropout=categorical:0:0.5]", "--tune.repeats=0"],
            "--tune.repeats=0: a grid runs",
        ),
        (["--tune.repeats=3"], "a tpe search has no repeats"),
        (["--tune.summary_only=true"], "no study storage at"),
        # Every end of a range and every listed value is built, as a trial would build it.
        (
            ["--model.learn_dropout=true", "--tune.params=[model.dropout=float:0.1:1.0]"],
            "train.py refuses a trial with --model.dropout=1.0: dropout=1.0 cannot start a learned rate",
        ),
        (
            ["--model.learn_dropout=true", "--tune.params=[model.input_dropout=categorical:0.2:0]"],
            "train.py refuses a trial with --model.input_dropout=0: input_dropout=0.0 cannot start a learned rate",
        ),
        (
            [
                "--model.dropout_schedule=early",
                "--trainer.max_epochs=2",
                "--tune.params=[model.dropout_cutoff_epoch=int:1:2]",
            ],
            "train.py refuses a trial with --model.dropout_cutoff_epoch=2: dropout_cutoff_epoch=2 is not before",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    Path("afile").touch()  # a file where the storage wants a folder
    with pytest.raises(SystemExit) as exit_:
        run_tune(*args, root=tmp_path / "out")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error: ") == 1, err  # one line
    assert not (tmp_path / "out").exists()  # no storage, no run folder


def test_a_metric_of_the_other_direction_does_not_join_an_existing_study(tmp_path, capsys):
    optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    with pytest.raises(SystemExit):
        run_tune("--tune.metric=val/loss", root=tmp_path)
    assert "was created to maximize its metric, and this run would minimize it" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("metric", "direction", "expected"),
    [
        ("val/acc", None, "maximize"),
        ("hp/val_acc_best", None, "maximize"),  # not named *acc, still an accuracy
        ("gap/acc", None, "minimize"),  # a gap, not an accuracy
        ("val/loss", "maximize", "maximize"),  # explicit wins
        ("my/f1", None, "minimize"),  # a model from elsewhere may log its own
    ],
)
def test_the_direction_follows_the_metric_unless_given(metric, direction, expected):
    model = "my_module.MyClassifier" if metric == "my/f1" else "dropout_lab.MLPClassifier"
    assert metric_direction(metric, direction, model) == expected


def test_every_loss_and_gap_is_minimized_and_every_other_accuracy_maximized():
    for metric, direction in VALIDATION_METRICS.items():
        smaller_is_better = "loss" in metric or "gap" in metric
        assert direction == ("minimize" if smaller_is_better else "maximize"), metric


def test_an_explicit_direction_joins_a_study_of_that_direction(tmp_path, capsys):
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))  # the study's one trial is already there: nothing runs
    run_tune("--tune.metric=val/loss", "--tune.direction=maximize", "--tune.n_trials=1", root=tmp_path)
    assert "Best: trial 0, val/loss=0.5000" in capsys.readouterr().out


def test_a_tensorboard_logger_flag_keeps_the_study_in_the_root_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = TuneCLI(["--trainer.logger=TensorBoardLogger", f"--trainer.default_root_dir={tmp_path / 'out'}"])
    config, root = user_config(cli)
    assert root == tmp_path / "out"  # not a folder named <trainer.default_root_dir>
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "out")


@pytest.mark.slow
def test_every_validation_is_reported_when_there_are_two_per_epoch(tmp_path):
    run_tune(*TINY, "--trainer.val_check_interval=0.5", "--tune.n_trials=1", root=tmp_path)
    (trial,) = load_study(tmp_path).trials
    assert trial.state == COMPLETE and sorted(trial.intermediate_values) == [0, 1]


@pytest.mark.slow
def test_tiny_search_writes_trials_runs_and_a_best_config_that_train_py_reproduces(tmp_path, capsys):
    run_tune(*TINY, "--tune.n_trials=3", root=tmp_path)
    out = capsys.readouterr().out

    trials = load_study(tmp_path).trials
    assert [(t.number, t.state) for t in trials] == [(0, COMPLETE), (1, COMPLETE), (2, COMPLETE)]
    assert all(set(t.params) == {"model.dropout", "model.input_dropout"} for t in trials)
    for trial in trials:  # each run named by its point, as every chart's legend shows it
        dropout, input_dropout = trial.params["model.dropout"], trial.params["model.input_dropout"]
        run_dir = tmp_path / "tune" / f"dropout={dropout:.4g},input_dropout={input_dropout:.4g}"
        assert trial.user_attrs["run"] == str(run_dir) and trial.user_attrs["epochs"] == 1
        assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "config.yaml").exists()
        assert tune_hparams(run_dir) == {"tune/trial": trial.number, "tune/state": "COMPLETE"}
        events = read_events(run_dir)
        assert hparams_tab_columns(events) == ["dropout", "dropout_schedule", "input_dropout", "learn_dropout", "model"]
        assert "gap/loss" in events.Tags()["scalars"]
        assert scalars(events, "val/acc")[-1][1] == pytest.approx(trial.value)

    # VALIDATION_METRICS, which --tune.metric is checked against, is what a run logs at validation.
    logged = {tag for tag in events.Tags()["scalars"] if tag.split("/")[0] in ("val", "train_eval", "gap", "hp")}
    assert logged == set(VALIDATION_METRICS)

    best = max(trials, key=lambda t: t.value)
    assert f"Best: trial {best.number}, val/acc={best.value:.4f}" in out
    config = tmp_path / "tune" / "best_config.yaml"
    assert f"dropout: {best.params['model.dropout']}" in config.read_text()
    assert "tensorboard --logdir " + str(tmp_path / "tune") in out
    run_train("--config", str(config), root=None)
    again = tmp_path / "tune" / "best" / "version_0"  # beside the trials, where that tensorboard command looks
    assert scalars(read_events(again), "val/acc")[-1][1] == pytest.approx(best.value, abs=1e-6)
    run_train("--config", str(config), root=tmp_path / "mine")  # the user's folder wins over the config's
    assert (tmp_path / "mine" / "best" / "version_0" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_pruning_stops_a_trial_worse_than_the_median_early(tmp_path, capsys):
    # Five finished trials that reached 0.9 at every epoch (the median pruner waits for five).
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={0: 0.9, 1: 0.9, 2: 0.9}))

    run_tune(*TINY, "--trainer.max_epochs=3", "--model.lr=1e-7", "--tune.n_trials=6", root=tmp_path)

    trial = load_study(tmp_path).trials[5]  # a learning rate far too small to learn anything
    assert trial.state == PRUNED and trial.user_attrs["epochs"] == 1
    assert "Trial 5 pruned at validation 1 (epoch 1): val/acc=" in capsys.readouterr().out
    run_dir = Path(trial.user_attrs["run"])
    assert tune_hparams(run_dir) == {"tune/trial": 5, "tune/state": "PRUNED"}
    assert [step for step, _ in scalars(read_events(run_dir), "val/acc")] == [1]


@pytest.mark.slow
def test_a_failed_trial_is_recorded_with_its_reason_and_the_search_goes_on(tmp_path):
    poison = ["--trainer.callbacks+=crash_callbacks.PoisonWeightsAtEpochStart", "--trainer.callbacks.epoch=0"]
    run_tune(*TINY, *poison, "--tune.n_trials=2", root=tmp_path)

    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [FAIL, FAIL]
    assert all("FloatingPointError: the training loss became nan" in t.user_attrs["fail_reason"] for t in trials)
    assert tune_hparams(Path(trials[1].user_attrs["run"])) == {"tune/trial": 1, "tune/state": "FAIL"}


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
    runs = {Path(t.user_attrs["run"]) for t in trials}
    assert len(runs) == 4 and runs == set((tmp_path / "tune").glob("dropout=*"))


@pytest.mark.slow
def test_two_workers_share_one_study_without_losing_or_repeating_a_trial(tmp_path):
    args = ["--tune.n_trials=4", "--trainer.max_epochs=2", *hold_until_both_workers_run(tmp_path)]
    workers = [tune_process(*args, root=tmp_path) for _ in range(2)]
    outputs = [finish(worker) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs

    trials = load_study(tmp_path).trials
    assert [(t.number, t.state) for t in trials] == [(n, COMPLETE) for n in range(4)]
    ran = [{int(number) for number in re.findall(r"^Trial (\d+):", out, re.MULTILINE)} for out in outputs]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == {0, 1, 2, 3} and all(ran)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    for trial in trials:
        assert len(list(Path(trial.user_attrs["run"]).glob("config*.yaml"))) == 1


def hold_until_both_workers_run(root: Path) -> list[str]:
    """Flags that hold each trial until the other worker has one: otherwise the worker that starts first was
    seen to take every trial before the other could start (once in 9 runs)."""
    storage = f"sqlite:///{root / 'optuna.db'}"
    return ["--trainer.callbacks+=crash_callbacks.WaitForAnotherWorker", f"--trainer.callbacks.storage={storage}"]


GRID = ["--tune.sampler=grid", "--tune.params=[model.dropout=categorical:0:0.5]"]
POINTS = [{"model.dropout": dropout, "seed_everything": seed} for seed in (0, 1) for dropout in (0, 0.5)]


def test_a_grid_runs_every_point_of_one_seed_before_the_next_seed():
    # An interrupted grid then has whole grids of its first seeds, not every seed of its first points.
    space = [parse_entry("model.dropout=categorical:0:0.5"), parse_entry("data.batch_size=int:32:33")]
    points = grid_points(grid_space(space, repeats=2))
    assert [tuple(point.values()) for point in points] == [
        (dropout, batch_size, seed) for seed in (0, 1) for dropout in (0, 0.5) for batch_size in (32, 33)
    ]


def test_a_grid_over_an_int_range_runs_both_ends():
    (batch_size, seed) = grid_space([parse_entry("data.batch_size=int:32:34")], repeats=3)
    assert batch_size.choices == (32, 33, 34) and (seed.low, seed.high) == (0, 2)


def test_a_trials_run_is_named_by_its_point_and_stays_unique(tmp_path):
    study = optuna.create_study()
    first, again = study.ask(), study.ask()
    point = {"model.dropout": 0.5, "seed_everything": 1}
    assert run_name(first, point, tmp_path) == "dropout=0.5,seed=1"
    assert run_name(first, {"model.lr": 0.000123456}, tmp_path) == "lr=0.0001235"
    (tmp_path / "dropout=0.5,seed=1").mkdir()  # the run of a trial that was killed at this point
    assert run_name(again, point, tmp_path) == "dropout=0.5,seed=1,trial=1"


def test_a_grid_does_not_join_a_search_study(tmp_path, capsys):
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    with pytest.raises(SystemExit):
        run_tune(*GRID, root=tmp_path)
    assert "study 'tune'" in (err := capsys.readouterr().err) and "is a tpe study" in err


def test_a_summary_of_a_study_without_finished_grid_trials_is_refused(tmp_path, capsys):
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))  # a search's trial: no test metrics
    with pytest.raises(SystemExit) as exit_:
        run_tune("--tune.summary_only=true", root=tmp_path)
    assert exit_.value.code == 2
    assert "study 'tune' has no finished grid trial" in capsys.readouterr().err
    assert not (tmp_path / "tune").exists()


@pytest.mark.slow
def test_two_workers_run_every_grid_point_and_seed_exactly_once_then_summarize(tmp_path):
    args = [*GRID, "--tune.repeats=2", *hold_until_both_workers_run(tmp_path)]
    workers = [tune_process(*args, "--tune.pruner=median", root=tmp_path), tune_process(*args, root=tmp_path)]
    outputs = [finish(worker) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert "--tune.pruner=median is left out: a grid runs every point to the end" in outputs[0]

    study = load_study(tmp_path)
    completed = [trial for trial in study.trials if trial.state == COMPLETE]
    assert sorted((t.params for t in completed), key=POINTS.index) == POINTS  # every point and seed, none twice
    by_worker = [{int(n) for n in re.findall(r"^Trial (\d+):", out, re.MULTILINE)} for out in outputs]
    assert by_worker[0].isdisjoint(by_worker[1]) and all(by_worker)
    for trial in completed:  # the seed is the run's own --seed_everything; the test ran after the fit
        dropout, seed = trial.params["model.dropout"], trial.params["seed_everything"]
        run_dir = tmp_path / "tune" / f"dropout={dropout},seed={seed}"
        assert trial.user_attrs["run"] == str(run_dir)
        assert f"seed_everything: {seed}" in (run_dir / "config.yaml").read_text()
        assert set(trial.user_attrs) >= {"val/acc_best", "gap/loss", "gap/acc", "train_eval/acc", "test/ece"}
        assert 0 <= trial.user_attrs["test/acc"] <= 1 and trial.user_attrs["test/nll"] > 0

    rows = list(csv.DictReader((tmp_path / "tune" / "summary.csv").open()))
    assert [(row["model.dropout"], row["test/acc_count"]) for row in rows] == [("0", "2"), ("0.5", "2")]
    assert (tmp_path / "tune" / "summary.png").stat().st_size > 10_000


@pytest.mark.slow
def test_an_interrupted_grid_runs_only_the_point_it_has_not_finished(tmp_path):
    # What a worker killed in trial 1 leaves: trial 0 finished, trial 1 RUNNING for a process that is gone.
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    study.set_user_attr("sampler", "grid")
    first = {"model.dropout": 0, "seed_everything": 0}
    distributions = {
        "model.dropout": optuna.distributions.CategoricalDistribution((0, 0.5)),
        "seed_everything": optuna.distributions.IntDistribution(0, 0),
    }
    trial = optuna.trial.create_trial(
        value=0.5, params=first, distributions=distributions, user_attrs={"point": first, "test/acc": 0.5}
    )
    study.add_trial(trial)
    gone = subprocess.Popen(["true"])
    gone.wait()
    killed = study.ask()
    killed.set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}")
    killed.set_user_attr("point", {"model.dropout": 0.5, "seed_everything": 0})

    run_tune(*TINY, *GRID, root=tmp_path)

    trials = load_study(tmp_path).trials
    assert [(t.number, t.state) for t in trials] == [(0, COMPLETE), (1, FAIL), (2, COMPLETE)]
    assert trials[2].params == {"model.dropout": 0.5, "seed_everything": 0}  # the killed point, and only that
    assert [p.name for p in (tmp_path / "tune").glob("dropout=*")] == ["dropout=0.5,seed=0"]


def finished_grid(root: Path, dropouts: tuple, seeds: int, values: dict | None = None) -> optuna.Study:
    """A grid study as tune.py leaves it, every point finished: trial values from ``values`` (by point), else 0.5."""
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{root / 'optuna.db'}", direction="maximize")
    study.set_user_attr("sampler", "grid")
    distributions = {
        "model.dropout": optuna.distributions.CategoricalDistribution(dropouts),
        "seed_everything": optuna.distributions.IntDistribution(0, seeds - 1),
    }
    for seed in range(seeds):
        for dropout in dropouts:
            point = {"model.dropout": dropout, "seed_everything": seed}
            value = (values or {}).get((dropout, seed), 0.5)
            attrs = {"point": point, "test/acc": value}
            study.add_trial(
                optuna.trial.create_trial(value=value, params=point, distributions=distributions, user_attrs=attrs)
            )
    return study


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (GRID, "--tune.params gives model.dropout categorical:0:0.5, and study 'tune' ran it as categorical:0"),
        (
            ["--tune.sampler=grid", "--tune.params=[model.input_dropout=categorical:0]"],
            "--tune.params names model.input_dropout, and study 'tune' is a grid over model.dropout",
        ),
    ],
)
def test_a_grid_with_other_values_than_its_study_stops_in_one_line_and_leaves_no_trial(tmp_path, capsys, args, message):
    # Optuna refuses another value space for a parameter a study already has; each such trial used to fail
    # and stay in the study.
    finished_grid(tmp_path, (0,), seeds=1)
    with pytest.raises(SystemExit) as stopped:
        run_tune(*TINY, *args, root=tmp_path)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error: ") == 1
    assert len(load_study(tmp_path).trials) == 1


def test_a_study_whose_seeds_are_a_list_of_values_is_refused_in_one_line(tmp_path, capsys):
    # tune.py stored a grid's seeds as a categorical parameter before a grid could grow by seeds.
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    study.set_user_attr("sampler", "grid")
    old = {"model.dropout": 0, "seed_everything": 0}
    distributions = {
        "model.dropout": optuna.distributions.CategoricalDistribution((0, 0.5)),
        "seed_everything": optuna.distributions.CategoricalDistribution((0,)),
    }
    study.add_trial(
        optuna.trial.create_trial(value=0.5, params=old, distributions=distributions, user_attrs={"point": old})
    )
    with pytest.raises(SystemExit):
        run_tune(*TINY, *GRID, "--tune.repeats=2", root=tmp_path)
    assert "holds its seeds as a list of values, which cannot grow" in capsys.readouterr().err
    assert len(load_study(tmp_path).trials) == 1


@pytest.mark.slow
def test_a_finished_grid_run_with_more_repeats_adds_the_new_seeds(tmp_path):
    finished_grid(tmp_path, (0, 0.5), seeds=1)
    run_tune(*TINY, *GRID, "--tune.repeats=2", root=tmp_path)
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [COMPLETE] * 4
    assert [t.params for t in trials[2:]] == [
        {"model.dropout": 0, "seed_everything": 1},
        {"model.dropout": 0.5, "seed_everything": 1},
    ]
    rows = list(csv.DictReader((tmp_path / "tune" / "summary.csv").open()))
    assert [row["test/acc_count"] for row in rows] == ["2", "2"]


def test_a_grids_best_point_is_the_best_mean_over_its_seeds_not_one_lucky_seed(tmp_path, capsys):
    # dropout 0 has the best single trial (0.99, seed 1); dropout 0.5 the best mean (0.9 against 0.7).
    values = {(0, 0): 0.41, (0, 1): 0.99, (0.5, 0): 0.89, (0.5, 1): 0.91}
    finished_grid(tmp_path, (0, 0.5), seeds=2, values=values)

    run_tune(*TINY, *GRID, "--tune.repeats=2", "--seed_everything=7", root=tmp_path)

    out = capsys.readouterr().out
    assert "Best: mean val/acc over 2 seeds 0.9000 ± 0.0100 (mean ± 1 standard error; trials 1, 3)" in out
    assert "--model.dropout=0.5" in out.partition("Best: ")[2].splitlines()[0]
    config = (tmp_path / "tune" / "best_config.yaml").read_text()
    assert config.startswith("# Best grid point of study 'tune': the best mean val/acc over 2 seeds")
    assert "seed_everything: 7\n" in config and "dropout: 0.5\n" in config  # the user's seed, not the lucky 1
    assert "Over seeds (mean ± 1 standard error, as in summary.png)" in out


def test_best_config_writes_into_the_users_default_root_dir(tmp_path, monkeypatch):
    finished_grid(tmp_path, (0, 0.5), seeds=1)
    run_tune(*TINY, *GRID, root=tmp_path)
    config = str(tmp_path / "tune" / "best_config.yaml")
    monkeypatch.chdir(tmp_path)

    def log_dir(*args: str) -> Path:
        return Path(DropoutLabCLI(["--config", config, *args]).trainer.logger.log_dir)

    assert log_dir() == tmp_path / "tune" / "best" / "version_0"  # beside the trials
    assert log_dir(f"--trainer.default_root_dir={tmp_path / 'mine'}") == tmp_path / "mine" / "best" / "version_0"


def test_a_grid_opens_its_study_without_a_pruner_even_when_one_is_asked_for(tmp_path, monkeypatch, capsys):
    asked = {}

    def stop_before_the_study(url, name, direction, pruner, sampler):
        asked.update(pruner=pruner, sampler=sampler)
        raise SpaceError("stopped before the study opens")

    monkeypatch.setattr(tuning, "open_study", stop_before_the_study)
    with pytest.raises(SystemExit):
        run_tune(*GRID, "--tune.pruner=median", root=tmp_path)
    assert asked == {"pruner": "none", "sampler": "grid"}  # a pruned seed would leave its point's mean short
    assert "--tune.pruner=median is left out" in capsys.readouterr().out


def test_a_setting_the_model_refuses_stops_before_the_storage_opens_not_in_every_trial(tmp_path, capsys):
    # Parsing accepts it; building the model and trainer does not (the cutoff must fall inside the run).
    args = ["--model.dropout_schedule=early", "--model.dropout_cutoff_epoch=5", "--tune.n_trials=2", *TINY]
    with pytest.raises(SystemExit) as stopped:
        run_tune(*args, root=tmp_path)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "error: train.py refuses this command's trials (the first: --model.dropout=0.0 " in err
    assert ": dropout_cutoff_epoch=5 is not before max_epochs=1" in err
    assert not any(tmp_path.iterdir())  # no optuna.db, no run folder
