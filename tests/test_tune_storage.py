"""tune.py's study beyond one SQLite file: on a PostgreSQL server that the tests start, in a journal file,
and bad storages refused in one line. The SLURM job array of workers: tests/test_multinode.py."""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import psycopg
import pytest
from optuna.storages._heartbeat import BaseHeartbeat
from test_multinode import free_port
from test_tune import GRID, POINTS, TINY, finish, run_tune, tune_process

from dropout_lab import tuning
from dropout_lab.study_storage import HeartbeatJournalStorage, open_storage, storage_url

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
COMPLETE, FAIL, RUNNING = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.RUNNING,
)


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's initdb and pg_ctl: on PATH, or where Debian's postgresql package puts them."""
    if pg_ctl := shutil.which("pg_ctl"):
        return Path(pg_ctl).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(Path(path).parts[-3]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of the tests' own on a free loopback port, stopped at the end; its URL."""
    bin_dir = postgres_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        pytest.skip("PostgreSQL's server is not installed (no initdb, pg_ctl): apt-get install postgresql")
    as_user = []
    # Not pytest's tmp_path: the server refuses to run as root, and the postgres user cannot enter pytest's
    # folders (mode 0700, root's).
    folder = Path(tempfile.mkdtemp(prefix="dropout-lab-postgres-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root, and there is no postgres user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]

    def pg(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True, timeout=60)

    data, port = folder / "data", free_port()
    try:
        init = pg(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
        assert init.returncode == 0, init.stdout + init.stderr
        # Only on 127.0.0.1, its socket in its own folder; fsync off: the tests' data need not survive a crash.
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        started = pg(bin_dir / "pg_ctl", "start", "-w", "-D", data, "-l", folder / "server.log", "-o", options)
        assert started.returncode == 0, started.stdout + started.stderr + (folder / "server.log").read_text()
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        pg(bin_dir / "pg_ctl", "stop", "-D", data, "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["postgresql", "journal"])
def storage(request, tmp_path) -> str:
    """--tune.storage for one test: a new database on the server, or a journal file."""
    if request.param == "journal":
        return str(tmp_path / "shared" / "optuna.log")
    server = request.getfixturevalue("postgres")
    database = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(server.replace("+psycopg", "") + "/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    return f"{server}/{database}"


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="tune", storage=open_storage(storage_url(storage, Path()), 10))


def ran_trials(output: str) -> set[int]:
    return {int(line.split()[1].rstrip(":")) for line in output.splitlines() if line.startswith("Trial ")}


@pytest.mark.slow
def test_two_workers_run_every_grid_point_and_seed_exactly_once(tmp_path, storage):
    # Trial 0 starts training only once trial 1's run exists: both workers run trials, whichever is faster.
    args = [*GRID, "--tune.repeats=2", f"--tune.storage={storage}", "--trainer.callbacks+=crash_callbacks.WaitForRun"]
    workers = [tune_process(*args, root=tmp_path) for _ in range(2)]
    outputs = [finish(worker, timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs

    completed = [trial for trial in load(storage).trials if trial.state == COMPLETE]
    assert sorted((t.params for t in completed), key=POINTS.index) == POINTS  # every point and seed, none twice
    by_worker = [ran_trials(output) for output in outputs]
    assert by_worker[0].isdisjoint(by_worker[1]) and all(by_worker)
    assert by_worker[0] | by_worker[1] >= {trial.number for trial in completed}
    assert len({trial.user_attrs["worker"] for trial in completed}) == 2


@pytest.mark.slow
def test_a_killed_workers_point_runs_again_once_its_heartbeat_stops_and_the_sweep_continues(
    tmp_path, storage, monkeypatch
):
    args = [*GRID, "--tune.repeats=2", f"--tune.storage={storage}"]
    killed = tune_process(*args, "--trainer.callbacks+=crash_callbacks.KillInRun", root=tmp_path)  # in trial 1
    finish(killed, timeout=120)
    assert killed.returncode == -9
    first = load(storage).trials
    assert [t.state for t in first] == [COMPLETE, RUNNING]
    # As if the worker had run on another machine: no process to look for, only its heartbeat tells.
    opened = open_storage(storage_url(storage, Path()), 10)
    study_id = opened.get_study_id_from_name("tune")
    opened.set_trial_user_attr(opened.get_trial_id_from_study_id_trial_number(study_id, 1), "worker", "elsewhere:1")

    # The sweep started again: a new worker, with a heartbeat of 1 s (stale after 2 s) for a quick test.
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    started = time.monotonic()
    run_tune(*TINY, *args, "--tune.timeout=60", root=tmp_path)  # without a heartbeat it would wait forever

    trials = load(storage).trials
    assert time.monotonic() - started < 60
    assert trials[0].datetime_complete == first[0].datetime_complete  # kept, not run again
    assert trials[1].state == FAIL and "fail_reason" not in trials[1].user_attrs  # found dead
    completed = [trial for trial in trials if trial.state == COMPLETE]
    assert sorted((t.params for t in completed), key=POINTS.index) == POINTS
    assert [t.params for t in completed].count(trials[1].user_attrs["point"]) == 1  # the killed point, once


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_journal_trial_without_a_heartbeat_for_two_intervals_is_failed(tmp_path):
    storage = open_storage(str(tmp_path / "optuna.log"), 1)
    study = optuna.create_study(study_name="tune", storage=storage)
    study.ask()
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("tune"), 0))
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == RUNNING  # beating
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == FAIL


def test_optunas_journal_storage_has_no_heartbeat_of_its_own():
    # When it gets one (optuna/optuna#6615), HeartbeatJournalStorage should give way to it.
    assert not issubclass(optuna.storages.JournalStorage, BaseHeartbeat)
    assert issubclass(HeartbeatJournalStorage, BaseHeartbeat)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (
            "postgresql+psycopg://postgres:secret@127.0.0.1:{port}/optuna",
            "cannot open the study storage postgresql+psycopg://postgres:***@127.0.0.1:{port}/optuna (connection "
            'failed: connection to server at "127.0.0.1", port {port} failed: Connection refused Is the server',
        ),
        ("mysql://user@127.0.0.1/optuna", "--tune.storage=mysql://user@127.0.0.1/optuna needs a database driver"),
        ("afile/optuna.log", "cannot open the study storage {tmp}/afile/optuna.log ([Errno 17] File exists"),
    ],
)
def test_a_storage_that_cannot_be_opened_stops_in_one_line_before_any_trial(
    tmp_path, capsys, monkeypatch, storage, message
):
    monkeypatch.chdir(tmp_path)
    Path("afile").touch()  # a file where the journal's folder would be
    port = free_port()  # nothing listens there
    with pytest.raises(SystemExit) as exit_:
        run_tune(*TINY, f"--tune.storage={storage.format(port=port)}", root=tmp_path / "out")
    assert exit_.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert message.format(port=port, tmp=tmp_path) in line and "secret" not in line
    assert not (tmp_path / "out").exists()  # no trial started


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: the case above covers root")
def test_a_journal_in_a_folder_that_cannot_be_written_stops_in_one_line(tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    with pytest.raises(SystemExit):
        run_tune(*TINY, f"--tune.storage={folder / 'optuna.log'}", root=tmp_path / "out")
    assert f"cannot open the study storage {folder / 'optuna.log'}" in capsys.readouterr().err


def test_a_summary_of_a_journal_that_does_not_exist_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_tune("--tune.summary_only=true", f"--tune.storage={tmp_path / 'optuna.log'}", root=tmp_path)
    assert f"no study storage at {tmp_path / 'optuna.log'}" in capsys.readouterr().err
    assert not (tmp_path / "optuna.log").exists()


def test_the_storage_rule_a_url_a_journal_file_or_an_sqlite_file(tmp_path):
    assert storage_url("postgresql+psycopg://u@host/db", tmp_path) == "postgresql+psycopg://u@host/db"
    assert storage_url("study.log", tmp_path) == str(Path("study.log").resolve())
    assert storage_url("study.db", tmp_path) == f"sqlite:///{Path('study.db').resolve()}"
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path / 'optuna.db'}"
