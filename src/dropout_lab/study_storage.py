"""Where a tune.py study lives: an SQLite file, a journal file on a shared filesystem, or a database server.

What this file gives, and why each part exists:

- ``storage_url``: ``--tune.storage`` as tune.py reads it. One rule: anything with ``://`` is a database URL
  (``postgresql+psycopg://user@host/db``); a path ending in ``.log`` is a journal file (Optuna's
  JournalStorage, the rule optuna-dashboard follows too); any other path is an SQLite file.
- ``open_storage``: the Optuna storage of such a URL, with a heartbeat, or one line (``StorageError``) that
  names the URL and why it cannot be opened: a folder that cannot be written, a server that cannot be
  reached, a database driver that is not installed.
- ``HeartbeatJournalStorage``: JournalStorage with the heartbeat RDBStorage has. Optuna 5.1's JournalStorage
  has none (optuna/optuna#6615), so ``fail_stale_trials`` skips it, and the trial of a worker killed on
  another machine would stay RUNNING for good, its point never run again.
"""

import os
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.engine
import sqlalchemy.exc

# Optuna's heartbeat interface is public only through RDBStorage; its base class lives in a private module.
# tests/test_tune_storage.py fails when Optuna's JournalStorage gets a heartbeat of its own.
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage

JOURNAL_SUFFIX = ".log"
HEARTBEAT_ATTR = "dropout_lab:heartbeat"  # a system attribute: the trial's user attributes stay tune.py's own


class StorageError(ValueError):
    pass


def storage_url(storage: str | None, root: Path) -> str:
    """--tune.storage as a URL or a journal file's absolute path (default: optuna.db in ``root``)."""
    if storage is None:
        storage = str(root / "optuna.db")
    if "://" in storage:
        return storage
    if storage.endswith(JOURNAL_SUFFIX):
        return str(Path(storage).resolve())
    return f"sqlite:///{Path(storage).resolve()}"


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` storage URL; None for any other storage."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def journal_file(url: str) -> Path | None:
    """The file of a journal storage; None for any other storage."""
    return Path(url) if "://" not in url and url.endswith(JOURNAL_SUFFIX) else None


def shown(url: str) -> str:
    """The URL as messages print it: a database password as ***."""
    if "://" not in url:
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a URL SQLAlchemy reads: opening it says why
        return url


def open_storage(url: str, heartbeat_s: int) -> optuna.storages.BaseStorage:
    """The storage at ``url``, whose running trials record a heartbeat every ``heartbeat_s`` seconds."""
    try:
        if journal := journal_file(url):
            journal.parent.mkdir(parents=True, exist_ok=True)
            # The journal's lock is a file created beside it at every write.
            if not os.access(journal.parent, os.W_OK):
                raise PermissionError(f"{journal.parent} is not writable")
            return HeartbeatJournalStorage(JournalFileBackend(str(journal)), heartbeat_s)
        if sqlite := sqlite_file(url):
            sqlite.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s)
    except ImportError as error:  # SQLAlchemy imports the URL's driver (mysql:// needs MySQLdb)
        raise StorageError(
            f"--tune.storage={shown(url)} needs a database driver that is not installed "
            f"({error.__cause__ or error}): pip install it, or use postgresql+psycopg://..., whose driver "
            "(psycopg) requirements.txt installs."
        ) from None
    except (OSError, sqlalchemy.exc.SQLAlchemyError) as error:
        raise cannot_open(url, error) from error


def cannot_open(url: str, error: Exception) -> StorageError:
    """The one line for a storage that fails to open: the driver's message (psycopg's spans two lines)
    without SQLAlchemy's wrapping, and what to give instead."""
    reason = " ".join(str(getattr(error, "orig", None) or error).split())
    return StorageError(
        f"cannot open the study storage {shown(url)} ({reason}): give --tune.storage a writable SQLite file, "
        "a .log journal file on a shared filesystem, or a database URL this machine can reach."
    )


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal whose running trials record a heartbeat, as RDBStorage's do: Optuna's study.optimize runs
    ``record_heartbeat`` in a thread during every trial, and ``fail_stale_trials`` fails those without one
    for two intervals.

    The heartbeat is the worker's wall-clock time, so the machines' clocks must agree to within those two
    intervals (RDBStorage takes the database server's clock): a cluster's, kept by NTP, do.
    """

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it as stale (this one was stopped too long); its end is told anyway

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [
            self.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            for trial in running
            if now - trial.system_attrs.get(HEARTBEAT_ATTR, now) > 2 * self.heartbeat_interval
        ]

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None  # tune.py runs a dead trial's point again itself (claim_point)
