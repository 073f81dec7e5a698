"""An Optuna search over train.py's flags: the search space, the study, and one training run per trial.

What this file gives, and why each part exists:

- ``TuneCLI``: train.py's parser plus the ``--tune.*`` group, so a mistyped ``--tune.n_trails`` gets the
  same "did you mean" as any other flag. It only parses; every trial builds its own ``DropoutLabCLI``.
- ``parse_space``: ``model.dropout=float:0.0:0.8`` entries, checked (bounds, types, and the key itself,
  through the same parser as train.py) before the storage is opened or any trial starts.
- ``objective``: a trial is an ordinary train.py run given the trial's values as flags, logged as
  ``version_<trial number>`` of one TensorBoard experiment named after the study (the trial number comes
  from the storage, so two workers never pick the same folder).
- ``ReportToTrial``: reports the metric after every validation epoch and stops a trial Optuna's pruner
  gives up on. optuna-integration's PyTorchLightningPruningCallback works with lightning 2.6 too, but the
  trial also needs its best value and the number of epochs it ran, which this callback keeps.
- ``optimize``: runs trials until the study (not this process) holds ``n_trials`` finished ones, so an
  interrupted search continues where it stopped and two workers share one budget.
- ``--tune.sampler=grid``: every combination of categorical/int values, once per seed of ``--tune.repeats``;
  ``claim_point`` gives each trial the first point no earlier trial holds, so two workers never run one
  twice and a point whose trial was killed runs again. Its trials also test, and sweep_summary.py turns
  their final values into summary.csv and summary.png.
"""

import contextlib
import difflib
import inspect
import io
import itertools
import math
import os
import socket
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import optuna
import sqlalchemy.exc
import yaml
from jsonargparse.typing import PositiveInt
from lightning.pytorch.cli import LightningArgumentParser

from dropout_lab import sweep_summary
from dropout_lab.accuracy_interval import AccuracyInterval
from dropout_lab.callbacks import TensorBoardLayout, add_hparams_summary, hparam_metrics, hparams_table
from dropout_lab.cli import DEFAULT_ROOT_DIR, DropoutLabCLI, run_test
from dropout_lab.study_storage import (
    StorageError,
    cannot_open,
    journal_file,
    open_storage,
    shown,
    sqlite_file,
    storage_url,
)
from dropout_lab.suggestions import import_class

TYPES = ("float", "log", "int", "categorical")
# Trials that count towards --tune.n_trials: running ones too, so that two workers do not both start the
# last one. A FAIL counts only when the training itself failed (it has a fail_reason); a trial interrupted
# by Ctrl-C or a kill is run again.
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
# A killed worker's trial stays RUNNING in the storage; without a heartbeat for this long, the next trial
# started by any worker marks it failed.
HEARTBEAT_S = 10
WORKER = f"{socket.gethostname()}:{os.getpid()}"
# What a run of this package's classifiers logs at every validation (Classifier's val/ and train_eval/, the
# GeneralizationGap callback's gap/ and hp/), with the direction that is better; a test checks it against a run.
VALIDATION_METRICS = {
    "val/acc": "maximize",
    "val/loss": "minimize",
    "train_eval/acc": "maximize",
    "train_eval/loss": "minimize",
    "gap/loss": "minimize",
    "gap/acc": "minimize",
    "hp/val_acc_best": "maximize",
    "hp/gap_loss": "minimize",
    "hp/gap_acc": "minimize",
}


class TuneCLI(DropoutLabCLI):
    """train.py's command line plus ``--tune.*``; it parses and checks, and builds nothing."""

    usage = (
        "python tune.py [train.py's flags and --config files] [--tune.n_trials N] [--tune.params '[KEY=TYPE:...]'] ..."
    )
    description = """Search the dropout rates (or any flags) with Optuna: every trial is a train.py run.

--tune.params='[model.dropout=float:0.0:0.8, model.lr=log:1e-4:1e-2]' sets the search space (default: every
*dropout argument of the model); --tune.n_trials, --tune.metric (val/acc), --tune.pruner (median or none),
--tune.storage and --tune.study_name (workers with the same two share one study).
A grid over seeds: --tune.sampler=grid --tune.params='[model.dropout=categorical:0:0.2:0.5:0.7]' --tune.repeats=3
runs every value with seeds 0, 1, 2, tests each run, and writes summary.csv and summary.png (mean and spread
over the seeds) into the study's folder; --tune.summary_only=true writes them again. A grid takes data.* keys
too: --config configs/data_size.yaml --tune.params='[data.train_subset=categorical:250:1000:4000,
model.dropout=categorical:0:0.5]' draws test accuracy and gap against the number of training images, one line
per rate. train.py's flags follow."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--tune.sampler",
            type=Literal["tpe", "grid"],
            default="tpe",
            help="tpe: Optuna's search, each trial's values chosen from the earlier ones; grid: every combination "
            "of the categorical and int values of --tune.params, once for each seed of --tune.repeats.",
        )
        parser.add_argument(
            "--tune.repeats",
            type=int,
            default=1,
            help="grid: run every point with --seed_everything=0, 1, ..., N-1 (the summary averages over them).",
        )
        parser.add_argument(
            "--tune.folds",
            type=int | None,
            default=None,
            help="Run every grid point (and seed), or every tpe trial, on each of k folds (--data.folds=k "
            "--data.fold=0..k-1): a grid's summary then spreads over which images were held out, a tpe trial's value "
            "is the mean over its folds (no pruning).",
        )
        parser.add_argument(
            "--tune.summary_only",
            type=bool,
            default=False,
            help="grid: run nothing, write summary.csv and summary.png of the study's finished trials.",
        )
        parser.add_argument(
            "--tune.n_trials",
            type=PositiveInt,
            default=20,
            help="Finished trials the study should hold (tpe; a grid runs each of its points once).",
        )
        parser.add_argument(
            "--tune.timeout", type=float | None, default=None, help="Stop starting trials after this many seconds."
        )
        parser.add_argument(
            "--tune.params",
            type=list[str] | None,
            default=None,
            help="Search space, one 'key=type:...' per argument: model.dropout=float:0.0:0.8, model.lr=log:1e-4:1e-2, "
            "data.batch_size=int:32:256, model.cosine=categorical:true:false. "
            "Default: every *dropout argument of the model.",
        )
        parser.add_argument(
            "--tune.metric",
            type=str,
            default="val/acc",
            help=f"What the trials are compared by, as the run logs it at validation: {', '.join(VALIDATION_METRICS)}.",
        )
        parser.add_argument(
            "--tune.direction",
            type=Literal["maximize", "minimize"] | None,
            default=None,
            help="Whether a larger or a smaller --tune.metric is better; default: accuracies are maximized, "
            "losses and gaps minimized.",
        )
        parser.add_argument(
            "--tune.pruner",
            type=Literal["median", "none"] | None,
            default=None,
            help="median (tpe's default): stop a trial whose metric at its Nth validation is worse than the median of "
            "earlier trials at their Nth (after 5 finished trials; one validation per epoch unless "
            "--trainer.val_check_interval or check_val_every_n_epoch say otherwise); none (a grid's): run every "
            "trial to the end.",
        )
        parser.add_argument(
            "--tune.storage",
            type=str | None,
            default=None,
            help="Optuna storage URL or SQLite file; default: optuna.db in --trainer.default_root_dir.",
        )
        parser.add_argument(
            "--tune.study_name",
            type=str,
            default="tune",
            help="Workers with the same storage and name share one study.",
        )

    def before_instantiate_classes(self) -> None:
        if self.config.ckpt_path:
            self.parser.error("tune.py starts every trial from scratch: --ckpt_path is for train.py.")

    def instantiate_classes(self) -> None:
        pass  # each trial builds its own


@dataclass
class Param:
    key: str  # a train.py flag without the dashes: model.dropout
    kind: str  # one of TYPES
    low: float = 0  # an int for int
    high: float = 0
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial) -> object:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high)
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """What a trial of this parameter records in the study (Optuna compares it with the study's own)."""
        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.kind == "log")

    def corners(self) -> list[object]:
        """Values that cover every type the flag must accept."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


class SpaceError(ValueError):
    pass


def parse_space(entries: list[str] | None, model_class_path: str, learn_dropout: bool = False) -> list[Param]:
    if not entries:  # the model's dropout rates: float arguments named *dropout, not the learn_dropout switch
        parameters = inspect.signature(import_class(model_class_path)).parameters
        names = [name for name, p in parameters.items() if name.endswith("dropout") and p.annotation is float]
        low = 0.05 if learn_dropout else 0.0  # a learned rate starts strictly between 0 and 1
        entries = [f"model.{name}=float:{low}:0.8" for name in names]
    space = [parse_entry(entry) for entry in entries]
    keys = [param.key for param in space]
    if duplicates := sorted({key for key in keys if keys.count(key) > 1}):
        raise SpaceError(f"--tune.params names {', '.join(duplicates)} more than once; give one entry per argument.")
    return space


def parse_entry(entry: str) -> Param:
    usage = "write key=float:LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH or categorical:A:B:C"
    key, equals, spec = entry.partition("=")
    kind, _, rest = spec.partition(":")
    if not equals or not key or not rest:
        raise SpaceError(f"--tune.params entry {entry!r}: {usage}.")
    if kind not in TYPES:
        hint = difflib.get_close_matches(kind, TYPES, n=1)
        raise SpaceError(
            f"--tune.params entry {entry!r}: unknown type {kind!r}"
            f"{f' (did you mean {hint[0]}?)' if hint else ''}; {usage}."
        )
    values = [scalar(value) for value in rest.split(":")]
    if kind == "categorical":
        if not all(value is None or isinstance(value, (bool, int, float, str)) for value in values):
            raise SpaceError(
                f"--tune.params entry {entry!r}: categorical choices must be numbers, strings or booleans."
            )
        return Param(key, kind, choices=tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SpaceError(f"--tune.params entry {entry!r}: {kind} takes two numbers, LOW:HIGH.")
    low, high = values
    if not low < high or (kind == "log" and low <= 0) or (kind == "int" and not isinstance(low + high, int)):
        rule = {"log": "0 < LOW < HIGH", "int": "whole numbers LOW < HIGH"}.get(kind, "LOW < HIGH")
        raise SpaceError(f"--tune.params entry {entry!r}: {kind} needs {rule}, got LOW={low}, HIGH={high}.")
    return Param(key, kind, low, high)


def grid_space(space: list[Param], repeats: int, folds: int | None = None) -> list[Param]:
    """The grid: every parameter as its list of values, then the folds 0 to ``folds`` - 1 (if any), then the
    seeds 0 to ``repeats`` - 1.

    The seeds are an int range, not a list: Optuna refuses a categorical parameter whose choices change, and
    a finished grid run again with a larger --tune.repeats adds the new seeds to its study.
    """
    grid = []
    for param in space:
        if param.key == sweep_summary.SEED:
            raise SpaceError("--tune.params names seed_everything: a grid's seeds are 0 to N-1 of --tune.repeats=N.")
        if param.key in (sweep_summary.FOLD, "data.folds"):
            raise SpaceError(f"--tune.params names {param.key}: a grid's folds are those of --tune.folds=k.")
        if param.kind in ("float", "log"):
            raise SpaceError(
                f"--tune.sampler=grid runs listed values, and {param.key}={param.kind}:{param.low}:{param.high} is a "
                f"range: list the values, e.g. --tune.params='[{param.key}=categorical:{param.low}:{param.high}]'."
            )
        values = param.choices if param.kind == "categorical" else range(int(param.low), int(param.high) + 1)
        grid.append(Param(param.key, "categorical", choices=tuple(dict.fromkeys(values))))
    fold = [Param(sweep_summary.FOLD, "int", 0, folds - 1)] if folds else []
    return [*grid, *fold, Param(sweep_summary.SEED, "int", 0, repeats - 1)]


def grid_points(grid: list[Param]) -> list[dict]:
    """Every combination, seed after seed, and within a seed fold after fold: a sweep stopped early has whole
    grids of its first seeds (and folds)."""
    params = [p for p in grid if p.kind == "categorical"]
    repeats = [p for p in grid if p.kind == "int"][::-1]  # the seeds, then the folds if any
    return [
        {
            **dict(zip([p.key for p in params], values, strict=True)),
            **dict(zip([p.key for p in repeats], outer, strict=True)),
        }
        for outer in itertools.product(*(range(p.low, p.high + 1) for p in repeats))
        for values in itertools.product(*(p.choices for p in params))
    ]


def scalar(text: str) -> object:
    """'1e-4' as a number (YAML 1.1 would read it as a string), 'true' as a boolean."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def check_keys(cli: TuneCLI, base: str, space: list[Param]) -> None:
    """Parse the base config with every parameter at each of its corners, as a trial would: a key the chosen
    classes lack, or a value of the wrong type, stops here with train.py's own message and closest key."""
    for param in space:
        for value in param.corners():
            cli.parser.parse_args(["--config", base, f"--{param.key}={flag_value(value)}"])


def check_trials_build(base: dict, space: list[Param]) -> None:
    """Build the classes of a trial, as train.py would, and train nothing: with every parameter at its first
    corner, then with each parameter at each of its other corners (both ends of a range, every listed value).

    A refusal that parsing cannot see, raised when the model or trainer is built (a dropout_cutoff_epoch beyond
    max_epochs, a learned rate started at 0, ...), stops here in one line that names the trial's flags, before
    the storage is opened: not in the trials, each of which would count as failed towards --tune.n_trials.
    """
    first = {param.key: param.corners()[0] for param in space}
    for change in [{}, *({param.key: value} for param in space for value in param.corners()[1:])]:
        flags = {key: f"--{key}={flag_value(value)}" for key, value in (first | change).items()}
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):  # train.py's "error: ..." line, to add which trial it is
                trial_cli(base, list(flags.values()))
        except SystemExit:
            message = said.getvalue().strip().splitlines()[-1].removeprefix("error: ")
            if not change:  # maybe the command itself, whatever the trial's values
                trial = " ".join(flags.values())
                raise SpaceError(f"train.py refuses this command's trials (the first: {trial}): {message}") from None
            raise SpaceError(
                f"--tune.params: train.py refuses a trial with {flags[next(iter(change))]}: {message}"
            ) from None
        sys.stderr.write(said.getvalue())


def trial_cli(base: dict, flags: list[str]) -> DropoutLabCLI:
    """A trial's train.py command line, built: the base config with the trial's flags."""
    with warnings.catch_warnings():  # that tune.py's own command line is not this run's: it is parsed already
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return DropoutLabCLI(["--config", yaml.safe_dump(base), *flags])


def flag_value(value: object) -> str:
    return (
        value
        if isinstance(value, str)
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
    )


def metric_direction(metric: str, direction: str | None, model_class_path: str) -> str:
    """--tune.direction, or the metric's own; a name this package's classifiers do not log is refused here,
    not after a whole trial (a model from elsewhere may log others: those are checked at its first validation)."""
    known = VALIDATION_METRICS.get(metric)
    if known is None and model_class_path.startswith("dropout_lab."):
        hint = difflib.get_close_matches(metric, VALIDATION_METRICS, n=1)
        raise SpaceError(
            f"--tune.metric={metric} is not logged at validation{f' (did you mean {hint[0]}?)' if hint else ''}; "
            f"the run logs {', '.join(VALIDATION_METRICS)}."
        )
    return direction or known or ("maximize" if metric.endswith("acc") else "minimize")


def open_study(url: str, name: str, direction: str, pruner: str, sampler: str) -> optuna.Study:
    try:
        study = create_or_join(url, name, direction, pruner, ClaimedPoint() if sampler == "grid" else None)
    except StorageError as error:
        raise SpaceError(str(error)) from error
    # Optuna keeps an existing study's direction whatever create_study is told.
    if study.direction.name.lower() != direction:
        created = study.direction.name.lower()
        raise SpaceError(
            f"study {name!r} in {shown(url)} was created to {created} its metric, and this run would {direction} "
            f"it. Use another --tune.study_name, or that study's metric (and --tune.direction={created})."
        )
    # A grid trial waits for the earlier trials to claim their points (claim_point): a search's never do.
    kind = study.user_attrs.get("sampler", "tpe" if study.get_trials(deepcopy=False) else None)
    if kind not in (None, sampler):
        raise SpaceError(
            f"study {name!r} in {shown(url)} is a {kind} study: give --tune.sampler={sampler} its own "
            "--tune.study_name."
        )
    study.set_user_attr("sampler", sampler)
    return study


def open_existing_study(url: str, name: str) -> optuna.Study:
    """The study, refused in one line if there is none (--tune.summary_only creates nothing)."""
    if (file := sqlite_file(url) or journal_file(url)) and not file.is_file():
        raise SpaceError(f"no study storage at {file}: run the sweep first, or give --tune.storage.")
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url, HEARTBEAT_S))
    except StorageError as error:
        raise SpaceError(str(error)) from error
    except KeyError:
        raise SpaceError(f"no study {name!r} in {shown(url)}: give the --tune.study_name of the sweep.") from None


def check_same_space(study: optuna.Study, space: list[Param]) -> None:
    """Refuse, before any trial, a space that the study's trials did not run: a parameter with other values
    or of another type (Optuna would refuse it at the first trial, which would stay in the study), or a grid
    over other keys. A range may change (a search), and a grid's seeds may grow (--tune.repeats)."""
    wanted = {param.key: param for param in space}
    for trial in study.get_trials(deepcopy=False):
        point = trial.user_attrs.get("point")
        if point and set(point) != set(wanted):
            raise SpaceError(
                f"--tune.params names {', '.join(sorted(set(wanted) - {sweep_summary.SEED}))}, and study "
                f"{study.study_name!r} is a grid over {', '.join(sorted(set(point) - {sweep_summary.SEED}))}: "
                "give the study's own --tune.params, or another --tune.study_name."
            )
        for key, held in trial.distributions.items():
            if key not in wanted:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(held, wanted[key].distribution())
            except ValueError:
                if key == sweep_summary.SEED:  # a study from before a grid could grow by seeds
                    raise SpaceError(
                        f"study {study.study_name!r} holds its seeds as a list of values, which cannot grow: "
                        "--tune.summary_only=true still summarizes it; run this grid under another --tune.study_name."
                    ) from None
                raise SpaceError(
                    f"--tune.params gives {key} {spec(wanted[key].distribution())}, and study {study.study_name!r} "
                    f"ran it as {spec(held)}: only the seeds of a grid (--tune.repeats) may change in a study; give "
                    "the study's own values, or another --tune.study_name."
                ) from None


def check_same_folds(study: optuna.Study, folds: int | None) -> None:
    """Refuse, before any trial, --tune.folds other than the study's: its points would not be the same runs."""
    held = study.user_attrs.get("folds")
    if study.get_trials(deepcopy=False) and held != folds:
        started = f"with --tune.folds={held}" if held else "without --tune.folds"
        asked = f"--tune.folds={folds}" if folds else "this command has no --tune.folds"
        raise SpaceError(
            f"{asked}: study {study.study_name!r} was started {started}, and its trials split the data so: give it "
            "the same --tune.folds, or another --tune.study_name."
        )
    study.set_user_attr("folds", folds)


def spec(distribution: optuna.distributions.BaseDistribution) -> str:
    """A distribution as a --tune.params entry writes it: categorical:0:0.5, float:0.0:0.8, ..."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return ":".join(["categorical", *(flag_value(choice) for choice in distribution.choices)])
    kind = "int" if isinstance(distribution, optuna.distributions.IntDistribution) else "float"
    return f"{'log' if distribution.log else kind}:{distribution.low}:{distribution.high}"


def create_or_join(
    url: str, name: str, direction: str, pruner: str, sampler: optuna.samplers.BaseSampler | None, tries: int = 3
) -> optuna.Study:
    for attempt in range(tries):
        try:
            return optuna.create_study(
                storage=open_storage(url, HEARTBEAT_S),
                study_name=name,
                direction=direction,
                pruner=optuna.pruners.MedianPruner() if pruner == "median" else optuna.pruners.NopPruner(),
                sampler=sampler,  # None: Optuna's TPE
                load_if_exists=True,  # a second worker, or a restart, joins the study
            )
        except sqlalchemy.exc.SQLAlchemyError as error:
            failed = cannot_open(url, error)
        except StorageError as error:
            if not isinstance(error.__cause__, sqlalchemy.exc.SQLAlchemyError):
                raise  # a folder that cannot be written, a driver that is missing: no try would do better
            failed = error
        # Two workers started together on a new database both set it up; the slower one was seen to fail with
        # "UNIQUE constraint failed: alembic_version.version_num". By the next try it is set up; a database
        # that is really out of reach fails every time.
        if attempt == tries - 1:
            raise failed
        time.sleep(1)


class ReportToTrial(L.Callback):
    """After every validation epoch: report the metric to the trial, keep its best, and prune if told to."""

    def __init__(self, trial: optuna.Trial, metric: str, maximize: bool, report: bool = True) -> None:
        self.trial, self.metric, self.maximize, self.report = trial, metric, maximize, report
        self.best = -math.inf if maximize else math.inf
        # The step of each report: validations, not epochs, so that several per epoch
        # (--trainer.val_check_interval=0.5) are reported, and the pruner compares trials at the same one.
        self.validations = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.metric not in trainer.callback_metrics:
            raise MetricMissing(
                f"--tune.metric={self.metric} is not logged; logged: {', '.join(sorted(trainer.callback_metrics))}"
            )
        value = trainer.callback_metrics[self.metric].item()
        self.best = max(self.best, value) if self.maximize else min(self.best, value)
        if not self.report:
            return
        self.trial.report(value, step=self.validations)
        self.validations += 1
        # Raised before this epoch's checkpoints are written: Lightning runs ModelCheckpoint's hooks last.
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned at validation {self.validations} (epoch {trainer.current_epoch + 1}): "
                f"{self.metric}={value:.4f} is worse than the median of earlier trials at this validation"
            )


class MetricMissing(ValueError):
    pass


class ClaimedPoint(optuna.samplers.BaseSampler):
    """A grid trial's values: those of the point it claimed (claim_point), whatever it asks for."""

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution) -> object:
        return trial.user_attrs["point"][param_name]


def claim_point(trial: optuna.Trial, points: list[dict]) -> dict | None:
    """The first grid point that no earlier trial holds, kept as the trial's user attribute ``point``.

    Trial numbers are unique across workers, and a trial chooses only once every earlier trial has chosen,
    from what they hold: two trials never hold one point. A point whose trial was killed (found dead: a FAIL
    without fail_reason) goes to a later trial. None: every point is held (another worker took the last).
    """
    while True:
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
        if not any(t.state == optuna.trial.TrialState.RUNNING and "point" not in t.user_attrs for t in earlier):
            break
        fail_dead_trials(trial.study)  # one whose worker died before choosing is waited for no longer
        time.sleep(0.1)
    held = [t.user_attrs.get("point") for t in earlier if holds(t)]
    point = next((point for point in points if point not in held), None)
    trial.set_user_attr("point", point)
    return point


class GridTaken(Exception):
    pass


class KeepTestMetrics(L.Callback):
    """The deterministic test loop's values: with --model.mc_samples > 1, run_test's second (MC) loop
    starts with empty callback_metrics."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.values |= {tag: value.item() for tag, value in metrics.items() if tag.startswith("test/")}


def final_values(trainer: L.Trainer, cli: DropoutLabCLI) -> dict[str, float]:
    """The values a grid's summary needs: the fit's last ones, then the test of the checkpoint train.py tests."""
    logged = {tag: value.item() for tag, value in trainer.callback_metrics.items()}
    keep = KeepTestMetrics()
    trainer.callbacks.append(keep)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    run_test(trainer, cli.model, cli.datamodule, ckpt_path=best or None)
    logged |= keep.values
    values = {name: logged[tag] for name, tag in sweep_summary.SUMMARY_METRICS.items() if tag in logged}
    rates = {tag.removeprefix("hp/p_"): value for tag, value in logged.items() if tag.startswith("hp/p_")}
    learned = {f"{sweep_summary.RATE}{layer}": value for layer, value in rates.items()}
    tested = [cb.tested for cb in trainer.callbacks if isinstance(cb, AccuracyInterval) and cb.tested]
    return values | learned | ({"test/images": tested[0]} if tested else {})


def objective(
    trial: optuna.Trial, base: dict, space: list[Param], metric: str, maximize: bool, points: list[dict] | None = None
) -> float:
    """One train.py run: fit only in a search (the test set is for the best config, not for choosing it);
    a grid trial (``points``: the grid) runs the point it claims, and tests, as train.py does, for the summary.
    A search with --tune.folds=k runs its values on each fold, and its value is the mean over the folds."""
    trial.set_user_attr("worker", WORKER)
    if points is not None and claim_point(trial, points) is None:
        trial.set_user_attr("skipped", "every grid point is held by another trial")
        raise GridTaken(trial.user_attrs["skipped"])
    try:
        values = {param.key: param.suggest(trial) for param in space}
    except ValueError as error:  # Optuna refuses other choices for a parameter the study already has
        trial.set_user_attr(
            "fail_reason",
            f"--tune.params differs from the study's own space ({error}): give it "
            "another --tune.study_name, or the study's own --tune.params",
        )
        trial.set_user_attr("stop_search", True)
        raise
    folds = base["data"].get("init_args", {}).get("folds") if points is None else None
    if not folds:
        return fit_run(trial, base, values, metric, maximize, points)
    bests = [fit_run(trial, base, values | {sweep_summary.FOLD: fold}, metric, maximize) for fold in range(folds)]
    trial.set_user_attr("fold_values", bests)
    return statistics.fmean(bests)


def fit_run(
    trial: optuna.Trial, base: dict, values: dict, metric: str, maximize: bool, points: list[dict] | None = None
) -> float:
    """A train.py run of the trial's ``values``; its best ``metric``."""
    flags = [f"--{key}={flag_value(value)}" for key, value in values.items()]
    logger = base["trainer"]["logger"]["init_args"]
    logger["version"] = run_name(trial, values, Path(logger["save_dir"]) / logger["name"])
    print(f"\nTrial {trial.number}: {' '.join(flags)}")
    try:
        cli = trial_cli(base, flags)
    except SystemExit as refused:  # an error in a class's __init__ for this combination of values
        trial.set_user_attr("fail_reason", f"train.py refused these values (its message is above, exit {refused.code})")
        raise RuntimeError(trial.user_attrs["fail_reason"]) from None
    trainer = cli.trainer
    # A run of one fold reports nothing: the pruner compares trials, and a trial's value is its folds' mean.
    report = ReportToTrial(trial, metric, maximize, report=sweep_summary.FOLD not in values or points is not None)
    trainer.callbacks.insert(0, report)  # before the checkpoint callbacks, which Lightning keeps last
    layout = next(cb for cb in trainer.callbacks if isinstance(cb, TensorBoardLayout))
    layout.log_hparams = False  # written below, once the trial's state is known
    trial.set_user_attr("run", trainer.logger.log_dir)
    state = "FAIL"
    try:
        trainer.fit(cli.model, cli.datamodule)
        if points is not None:
            for name, value in final_values(trainer, cli).items():
                trial.set_user_attr(name, value)
        state = "COMPLETE"
    except optuna.TrialPruned as pruned:
        state = "PRUNED"
        print(f"Trial {trial.number} {pruned}.")
        raise
    except SystemExit as interrupt:  # Lightning turns Ctrl-C into sys.exit(1)
        state = "INTERRUPTED"
        raise KeyboardInterrupt from interrupt  # Optuna records the trial as failed and stops the search
    except Exception as error:
        trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
        trial.set_user_attr("stop_search", isinstance(error, MetricMissing))
        print(f"Trial {trial.number} failed: {trial.user_attrs['fail_reason']}")
        raise
    finally:
        trial.set_user_attr("epochs", trainer.fit_loop.epoch_progress.current.started)
        write_hparams(trainer, cli.model, {"tune/trial": trial.number, "tune/state": state})
    return report.best


def run_name(trial: optuna.Trial, values: dict, runs: Path) -> str:
    """The trial's TensorBoard run, named by its point (``dropout=0.5,seed=1``) so that every chart's legend
    says what each line is; ``,trial=N`` is added where that run exists already (the point of a trial that was
    killed, run again; a search that drew the same values twice)."""
    names = [label(key, value) for key, value in values.items()]
    name = ",".join(names)
    taken = {t.user_attrs.get("run") for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number}
    if not name or (runs / name).exists() or str(runs / name) in taken:
        name = ",".join([*names, f"trial={trial.number}"])
    return name.replace(os.sep, "-")  # a value with a slash would make a folder of its own


def label(key: str, value: object) -> str:
    """``dropout=0.5`` for model.dropout, ``seed=1`` for seed_everything: short enough for a chart's legend."""
    name = "seed" if key == sweep_summary.SEED else key.rpartition(".")[2]  # data.fold: fold=2
    return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={flag_value(value)}"


def write_hparams(trainer: L.Trainer, model: L.LightningModule, tune_params: dict) -> None:
    """The run's HParams summary, as TensorBoardLayout writes it, with the trial's number and state.

    TensorBoard keeps the first summary of a run, so this is the only one; the metrics' values are
    the hp/* scalars the run already logged.
    """
    params = hparams_table(model, trainer.datamodule) | tune_params
    add_hparams_summary(trainer.logger.experiment, params, hparam_metrics(model))


def optimize(study: optuna.Study, run_trial, n_trials: int, timeout: float | None, counted=None) -> None:
    """Run trials until the study holds ``n_trials`` that count, whoever ran them.

    Trials still running at the end are waited for: a worker may have died with one, and then it is
    run again here once it is found dead. ``counted``: how many count (default: ``count``).
    """
    counted = counted or count
    start = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # objective() says what happened to each trial
    waiting = False
    while True:
        fail_dead_trials(study)
        left = n_trials - counted(study)
        running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        if left <= 0 and running == 0:
            return
        if timeout is not None and time.monotonic() - start > timeout:
            print(f"--tune.timeout reached with {max(left, 0) + running} trials to run or running elsewhere.")
            return
        if left <= 0:
            if not waiting:
                print(f"Waiting for {running} trials running elsewhere (run here again if their worker died).")
            waiting = True
            time.sleep(HEARTBEAT_S / 2)
            continue
        waiting = False
        study.optimize(run_trial, n_trials=1, catch=(Exception,))
        last = study.trials[-1] if study.trials else None
        if last is not None and last.user_attrs.get("stop_search"):
            raise SpaceError(last.user_attrs["fail_reason"])


def count(study: optuna.Study) -> int:
    return sum(holds(trial) for trial in study.get_trials(deepcopy=False))


def count_points(study: optuna.Study, points: list[dict]) -> int:
    """The grid's points that a trial holds."""
    held = [trial.user_attrs.get("point") for trial in study.get_trials(deepcopy=False) if holds(trial)]
    return sum(point in held for point in points)


def holds(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial counts: finished, running, or failed in training (see COUNTED)."""
    failed = trial.state == optuna.trial.TrialState.FAIL and "fail_reason" in trial.user_attrs
    # A trial that stopped the search (a metric not logged, a changed space) ran no training: it holds nothing.
    return trial.state in COUNTED or (failed and not trial.user_attrs.get("stop_search"))


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark failed the RUNNING trials whose worker is gone: a process of this machine that no longer
    exists at once, any other after HEARTBEAT_S * 2 without a heartbeat (Optuna's own check)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not process_exists(int(pid)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tune(cli: TuneCLI) -> None:
    options = cli.config.pop("tune")
    grid = options.sampler == "grid"
    try:
        user, root = user_config(cli)
        url = storage_url(options.storage, root)
        if options.summary_only:
            write_summary(open_existing_study(url, options.study_name), root, refuse_empty=True)
            return
        if options.repeats < 1 or (options.repeats > 1 and not grid):
            raise SpaceError(
                f"--tune.repeats={options.repeats}: a grid runs each point with seeds 0 to N-1 for N >= 1 "
                "(--tune.sampler=grid); a tpe search has no repeats."
            )
        if options.folds is not None and options.folds < 2:
            raise SpaceError(f"--tune.folds={options.folds}: k-fold cross-validation needs k >= 2 folds.")
        if options.folds is not None:  # every trial splits its data into these folds; the grid picks the fold
            user["data"].setdefault("init_args", {})["folds"] = options.folds
        if grid and not options.params:
            raise SpaceError(
                "--tune.sampler=grid runs listed values: --tune.params='[model.dropout=categorical:0:0.5]'."
            )
        learn_dropout = user["model"].get("init_args", {}).get("learn_dropout", False)
        space = parse_space(options.params, user["model"]["class_path"], learn_dropout)
        if grid:
            space = grid_space(space, options.repeats, options.folds)
        check_keys(cli, yaml.safe_dump(user), space)
        check_trials_build(trial_config(user, root, options.study_name), space)
        direction = metric_direction(options.metric, options.direction, user["model"]["class_path"])
        maximize = direction == "maximize"
        if grid and options.pruner == "median":
            print("--tune.pruner=median is left out: a grid runs every point to the end, so that its seeds compare.")
        if options.folds and not grid and options.pruner == "median":
            print(
                "--tune.pruner=median is left out: with --tune.folds a trial's value is the mean over its folds, "
                "known at its end."
            )
        pruner = "none" if grid or options.folds else options.pruner or "median"
        study = open_study(url, options.study_name, direction, pruner, options.sampler)
        check_same_folds(study, options.folds)
        check_same_space(study, space)
    except SpaceError as error:
        cli.parser.exit(2, f"error: {error}\n")
    base = trial_config(user, root, options.study_name)
    points = grid_points(space) if grid else None
    n_trials = len(points) if grid else options.n_trials
    counted = (lambda study: count_points(study, points)) if grid else count
    if grid:
        folds = f" × {options.folds} folds" if options.folds else ""
        per_point = options.repeats * (options.folds or 1)
        print(f"Grid: {len(points) // per_point} points{folds} × {options.repeats} seeds = {n_trials} trials.")
    print(f"Study {options.study_name!r} in {url}: {counted(study)} of {n_trials} trials already finished or running.")
    try:
        optimize(
            study,
            lambda trial: objective(trial, base, space, options.metric, maximize, points),
            n_trials,
            options.timeout,
            counted,
        )
    except SpaceError as error:
        cli.parser.exit(2, f"error: {error}\n")
    except KeyboardInterrupt:
        summarize(cli, study, user, root, options.metric)
        if grid:
            write_summary(study, root)
        cli.parser.exit(
            130, f"\nInterrupted. The finished trials are kept in {url}; run the same command to continue.\n"
        )
    summarize(cli, study, user, root, options.metric)
    if grid:
        write_summary(study, root)


def write_summary(study: optuna.Study, root: Path, refuse_empty: bool = False) -> None:
    """summary.csv and summary.png of a grid's finished trials, in the study's folder; the table printed."""
    trials = sweep_summary.finished_grid_trials(study)
    if not trials:
        message = f"study {study.study_name!r} has no finished grid trial (--tune.sampler=grid) to summarize."
        if refuse_empty:
            raise SpaceError(message)
        print(message)
        return
    folder = root / study.study_name
    keys, rows = sweep_summary.summary_rows(trials)
    sweep_summary.write_csv(keys, rows, folder / "summary.csv")
    figure = sweep_summary.summary_figure(keys, rows, f"study {study.study_name!r}")
    png = sweep_summary.write_figure(figure, folder, step=len(trials))
    over = "folds and seeds" if any(sweep_summary.FOLD in trial.params for trial in trials) else "seeds"
    print(f"\nOver {over} (mean ± 1 standard error, as in summary.png), {len(trials)} finished trials:")
    print(sweep_summary.format_table(keys, rows))
    print(f"Table: {folder / 'summary.csv'}\nFigure: {png} (and in TensorBoard: tensorboard --logdir {folder})")


def user_config(cli: TuneCLI) -> tuple[dict, Path]:
    """The parsed config as a dict (what train.py would run), and the folder the study's runs go to."""
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    logger = config["trainer"].get("logger")
    if logger in (None, True):
        root = Path(config["trainer"].get("default_root_dir") or ".")
    elif isinstance(logger, dict) and logger["class_path"].endswith("TensorBoardLogger"):
        # --trainer.logger=TensorBoardLogger gets cli.py's placeholder save_dir, which train.py replaces in a
        # hook that tune.py skips: left here, the study would go to a folder named after the placeholder.
        if logger["init_args"].get("save_dir") in (None, DEFAULT_ROOT_DIR):
            logger["init_args"]["save_dir"] = config["trainer"].get("default_root_dir") or "."
        root = Path(logger["init_args"]["save_dir"])
    else:
        raise SpaceError(
            "tune.py logs every trial to TensorBoard: leave --trainer.logger out, or use a TensorBoardLogger."
        )
    return config, root


def trial_config(user: dict, root: Path, study_name: str) -> dict:
    """The user's config, logging into one TensorBoard experiment named after the study."""
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(root), "name": study_name},
    }
    if isinstance(user["trainer"].get("logger"), dict):
        logger["init_args"] = {**user["trainer"]["logger"]["init_args"], **logger["init_args"]}
    return {**user, "trainer": {**user["trainer"], "logger": logger}}


def summarize(cli: TuneCLI, study: optuna.Study, user: dict, root: Path, metric: str) -> None:
    folder = root / study.study_name
    # A grid trial that found every point taken ran nothing: it is no row of the table.
    trials = [trial for trial in study.get_trials(deepcopy=False) if "skipped" not in trial.user_attrs]
    keys = sorted({key for trial in trials for key in trial.params})
    print(f"\n{'trial':>5}  {'state':<8} {metric:>9} {'epochs':>6}  " + "  ".join(f"{key:>19}" for key in keys))
    for trial in trials:
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        params = "  ".join(
            f"{trial.params[key]:>19.4g}"
            if isinstance(trial.params.get(key), float)
            else f"{trial.params.get(key, '-')!s:>19}"
            for key in keys
        )
        reason = trial.user_attrs.get("fail_reason", "interrupted" if trial.state.name == "FAIL" else "")
        print(
            f"{trial.number:>5}  {trial.state.name:<8} {value:>9} "
            f"{trial.user_attrs.get('epochs', '-'):>6}  {params}  {reason}"
        )
    completed = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        print("No trial has completed yet: no best config.")
        return
    if study.user_attrs.get("sampler") == "grid":
        # The point with the best mean over its seeds, run with the user's own seed: not one lucky seed.
        point, members = sweep_summary.best_point(completed, study.direction.name == "MAXIMIZE")
        flags = [f"--{key}={flag_value(value)}" for key, value in point.items()]
        values = [trial.value for trial in members]
        spread = sweep_summary.mean_and_error(
            statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)
        )
        best = (
            f"mean {metric} over {sweep_summary.spread_over(members)} {spread} (mean ± 1 standard error; trials "
            f"{', '.join(str(trial.number) for trial in members)})"
        )
        said = [
            f"# Best grid point of study {study.study_name!r}: the best {best}.",
            f"# seed_everything is this command's ({user['seed_everything']}), not one of the grid's seeds; with "
            "--tune.folds, the data is the default split, not one fold.",
        ]
    else:
        trial = study.best_trial
        flags = [f"--{key}={flag_value(value)}" for key, value in trial.params.items()]
        best = f"trial {trial.number}, {metric}={trial.value:.4f}"
        run = trial.user_attrs.get("run", "no run folder")
        said = [f"# Best trial {trial.number} of study {study.study_name!r}: {metric}={trial.value:.4f} ({run})."]
    # Its run goes beside the trials (STUDY/best/version_N), so the same tensorboard --logdir shows it; the
    # logger's save_dir follows trainer.default_root_dir, so that a user's --trainer.default_root_dir wins.
    reproduce = trial_config(user, root, "best")
    reproduce["trainer"]["default_root_dir"] = str(folder)
    reproduce["data"] = {**reproduce["data"], "init_args": {**reproduce["data"].get("init_args", {}), "folds": None}}
    reproduce["trainer"]["logger"]["init_args"] |= {"save_dir": DEFAULT_ROOT_DIR, "version": None}
    config = cli.parser.parse_args(["--config", yaml.safe_dump(reproduce), *flags])
    config.pop("tune")
    path = folder / "best_config.yaml"
    header = "\n".join(
        [
            *said,
            f"# Reproduce it: python train.py --config {path}   (its run goes to {folder / 'best'}/version_N;",
            "# with --trainer.default_root_dir=DIR, to DIR/best/version_N)",
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    partial = sweep_summary.partial_path(path)
    partial.write_text(header + "\n" + cli.parser.dump(config, skip_none=False))
    partial.replace(path)  # atomic: two workers may write it at once
    print(f"\nBest: {best}, {' '.join(flags)}")
    print(f"Its config: {path}\nReproduce it: python train.py --config {path}   (run: {folder / 'best'}/version_N)")
    print(f"Compare the trials and the reproduced run in TensorBoard: tensorboard --logdir {folder}")
