"""Mutation check: make one small wrong change to the code at a time and see which test notices.

    python scripts/mutants.py --list                    # the mutants, and whether each still applies
    python scripts/mutants.py                           # every mutant against its tests
    python scripts/mutants.py --group new               # only the second group (issues 18-20's code)
    python scripts/mutants.py --group issue27           # only issue 27's audit (issues 21-26's code)
    python scripts/mutants.py ece_10_bins nll_no_clamp  # only these
    python scripts/mutants.py --coverage .coverage      # also every test whose coverage touches the change
    python scripts/mutants.py --tests tests/test_x.py   # only these tests (does a new test kill its mutant?)

A mutant is (name, file, old text, new text, description, tests): ``old`` must occur exactly once in the
file. For each mutant the file is changed, ``pytest`` runs the mutant's ``tests`` (the slow end-to-end
tests that reach the code through a train.py subprocess, and the files that exercise it) plus, with
``--coverage``, every test that ran a line of the function holding the change, and the file is put back
(also on Ctrl-C). A mutant is killed if any of those tests fails.

The coverage file comes from one run of the fast tests with per-test contexts, coverage and pytest-cov
installed outside the project's environment, for example::

    pip install --target /tmp/covlib --no-deps coverage pytest-cov
    PYTHONPATH=src:/tmp/covlib COVERAGE_FILE=/tmp/.coverage python -m pytest -m "not slow" \\
        --cov=dropout_lab --cov-context=test --cov-report=
    PYTHONPATH=/tmp/covlib python scripts/mutants.py --coverage /tmp/.coverage
"""

import argparse
import ast
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = "src/dropout_lab/"


@dataclass
class Mutant:
    name: str
    file: str  # under src/dropout_lab/
    old: str
    new: str
    description: str
    tests: list[str] = field(default_factory=list)  # pytest node ids or files, run whatever the coverage says


# Slow tests that reach each part through train.py or tune.py; the fast files that exercise it.
TEST_LOOP = [
    "tests/test_mc_dropout.py",
    "tests/test_uncertainty_values.py",
    "tests/test_subcommands.py::test_test_takes_the_cnn_from_the_checkpoint_and_logs_calibration_and_mc",
    "tests/test_gap.py::test_hparams_summary_records_the_run_and_its_final_metrics",
    "tests/test_train.py::test_train_py_writes_tensorboard_scalars_checkpoint_and_config",
]
PREDICT = [
    "tests/test_mc_dropout.py",
    "tests/test_prediction_values.py",
    "tests/test_subcommands.py::test_predict_writes_one_row_per_image_of_the_held_out_split",
]
TUNE = [
    "tests/test_tune.py",
    "tests/test_tuning_values.py",
]  # its slow tests run tune() in process or tune.py in a subprocess
AUGMENT = [
    "tests/test_augment.py",
    "tests/test_augment_values.py",
    "tests/test_datasets.py",
    "tests/test_train.py::test_config_file_and_override_are_applied_in_order",  # configs/cnn_mnist5k.yaml augments
]
IMAGE_FILES = ["tests/test_mc_dropout.py", "tests/test_image_files_values.py"]

MUTANTS = [
    # Issue 22: the survivors of the first audit.
    Mutant(
        "mi_no_clamp",
        "uncertainty.py",
        "entropy(samples).mean(dim=0)).clamp_min(0.0)",
        "entropy(samples).mean(dim=0))",
        "mutual information not clamped at 0",
        TEST_LOOP + PREDICT,
    ),
    Mutant("ece_10_bins", "uncertainty.py", "ECE_BINS = 15", "ECE_BINS = 10", "ECE with 10 bins", TEST_LOOP),
    Mutant(
        "nll_no_clamp",
        "uncertainty.py",
        "-true_class.clamp_min(torch.finfo(probs.dtype).tiny).log()",
        "-true_class.log()",
        "NLL without the tiny clamp",
        TEST_LOOP,
    ),
    Mutant(
        "test_mc_one_pass",
        "classifier.py",
        "samples, metrics = self.sample_probs(x), self.test_mc_metrics",
        "samples, metrics = self.sample_probs(x)[:1], self.test_mc_metrics",
        "test_step's MC loop scores one pass, not the mean",
        TEST_LOOP,
    ),
    Mutant(
        "test_metrics_swapped",
        "classifier.py",
        "samples, metrics = logits.softmax(dim=-1).unsqueeze(0), self.test_metrics",
        "samples, metrics = logits.softmax(dim=-1).unsqueeze(0), self.test_mc_metrics",
        "test_step's deterministic loop updates the MC metrics",
        TEST_LOOP,
    ),
    Mutant(
        "test_scores_logits",
        "classifier.py",
        "samples, metrics = logits.softmax(dim=-1).unsqueeze(0)",
        "samples, metrics = logits.unsqueeze(0)",
        "test_step's deterministic loop scores logits, not probabilities",
        TEST_LOOP,
    ),
    Mutant(
        "entropy_mean_of_passes",
        "uncertainty.py",
        '"entropy": entropy(probs)}',
        '"entropy": entropy(samples).mean(dim=0)}',
        "predict's entropy column: the mean entropy of the passes",
        PREDICT,
    ),
    Mutant(
        "entropy_holds_mi",
        "prediction.py",
        '"entropy": prediction["entropy"].tolist(),',
        '"entropy": prediction.get("mutual_information", prediction["entropy"]).tolist(),',
        "predict's entropy column holds the mutual information",
        PREDICT,
    ),
    Mutant(
        "rows_count_batches",
        "prediction.py",
        "self.rows += len(probs)",
        "self.rows += 1",
        "the printed row count counts batches",
        PREDICT,
    ),
    Mutant(
        "proba_no_std",
        "mc_dropout.py",
        "x = (images.to(model.device).float() / 255 - mean) / std",
        "x = images.to(model.device).float() / 255 - mean",
        "predict_proba skips / std",
        PREDICT,
    ),
    Mutant(
        "proba_ignores_mc_samples",
        "mc_dropout.py",
        "check_mc_samples(model.mc_samples if mc_samples is None else mc_samples)",
        "check_mc_samples(1 if mc_samples is None else mc_samples)",
        "predict_proba's default is 1 pass, not the model's mc_samples",
        PREDICT,
    ),
    Mutant(
        "tune_low_le_high",
        "tuning.py",
        "if not low < high or",
        "if not low <= high or",
        "a range with LOW == HIGH accepted",
        TUNE,
    ),
    Mutant(
        "tune_three_values",
        "tuning.py",
        "if len(values) != 2 or",
        "if len(values) < 2 or",
        "three values accepted for a float range",
        TUNE,
    ),
    Mutant(
        "tune_last_not_best",
        "tuning.py",
        "self.best = max(self.best, value) if self.maximize else min(self.best, value)",
        "self.best = value",
        "a trial's value is its last epoch's, not its best",
        TUNE,
    ),
    Mutant(
        "tune_minimize_keeps_max",
        "tuning.py",
        "if self.maximize else min(self.best, value)",
        "if self.maximize else max(self.best, value)",
        "the minimize branch keeps the max",
        TUNE,
    ),
    Mutant(
        "affine_shear",
        "data/augment.py",
        "torch.stack([cos * mirror, -sin, offset[:, 0]], 1)",
        "torch.stack([cos * mirror, sin, offset[:, 0]], 1)",
        "a shear instead of a rotation (sign of one sin)",
        AUGMENT,
    ),
    Mutant(
        "affine_shift_halved",
        "data/augment.py",
        "torch.tensor([2 / w, 2 / h])",
        "torch.tensor([1 / w, 1 / h])",
        "the shift halved",
        AUGMENT,
    ),
    Mutant(
        "affine_one_sided_rotation",
        "data/augment.py",
        "torch.deg2rad((torch.rand(n) * 2 - 1) * degrees)",
        "torch.deg2rad(torch.rand(n) * degrees)",
        "rotation only one way",
        AUGMENT,
    ),
    Mutant(
        "affine_mirror_one_entry",
        "data/augment.py",
        "torch.stack([sin * mirror, cos, offset[:, 1]], 1)",
        "torch.stack([sin, cos, offset[:, 1]], 1)",
        "the mirror applied to one entry of the matrix only",
        AUGMENT,
    ),
    Mutant(
        "crop_offset_short",
        "data/augment.py",
        "top = torch.randint(0, 2 * self.pad + 1, (n, 1))",
        "top = torch.randint(0, 2 * self.pad, (n, 1))",
        "the crop's vertical offset never reaches 2 * pad",
        AUGMENT,
    ),
    Mutant(
        "image_files_times_std",
        "data/image_files.py",
        "- self.mean) / self.std,)",
        "- self.mean) * self.std,)",
        "image files multiplied by std, not divided",
        IMAGE_FILES,
    ),
    Mutant(
        "image_files_case_sensitive",
        "data/image_files.py",
        "p.suffix.lower() in EXTENSIONS",
        "p.suffix in EXTENSIONS",
        "a folder's .PNG is not found",
        IMAGE_FILES,
    ),
    Mutant(
        "image_files_no_filter",
        "data/image_files.py",
        "[p for p in Path(pattern).iterdir() if p.suffix.lower() in EXTENSIONS]",
        "list(Path(pattern).iterdir())",
        "every file of a folder taken, a .txt too",
        IMAGE_FILES,
    ),
]


# Issue 22, second part: 20 changes to the new code of issues 18, 19 and 20 (python scripts/mutants.py --group new).
CONCRETE = ["tests/test_concrete_dropout.py"]  # its two slow tests train under DDP and read the logged rates
SCHEDULE = ["tests/test_dropout_schedule.py"]  # its slow tests train with a schedule and resume
SUMMARY = [
    "tests/test_sweep_summary.py",
    "tests/test_tune.py::test_two_workers_run_every_grid_point_and_seed_exactly_once_then_summarize",
]
EVALUATE = ["tests/test_mc_dropout.py", "tests/test_subcommands.py"]

NEW_CODE_MUTANTS = [
    Mutant(
        "concrete_no_rescale",
        "dropout.py",
        "return x * ((1 - z) / (1 - p)).to(x.dtype)",
        "return x * (1 - z).to(x.dtype)",
        "concrete dropout without the 1/(1-p) scale",
        CONCRETE,
    ),
    Mutant(
        "concrete_keep_logit",
        "dropout.py",
        "(torch.log(p + EPS) - torch.log(1 - p + EPS) + torch.log(u + EPS)",
        "(torch.log(1 - p + EPS) - torch.log(p + EPS) + torch.log(u + EPS)",
        "the relaxed mask drops with probability 1-p (the keep logit)",
        CONCRETE,
    ),
    Mutant(
        "concrete_times_temperature",
        "dropout.py",
        "torch.log(1 - u + EPS)) / temperature",
        "torch.log(1 - u + EPS)) * temperature",
        "the mask's logit multiplied by the temperature, not divided",
        CONCRETE,
    ),
    Mutant(
        "concrete_eps_large",
        "dropout.py",
        "EPS = 1e-7",
        "EPS = 1e-2",
        "the eps inside the mask's logs 1e-2",
        CONCRETE,
    ),
    Mutant(
        "regularizer_without_k",
        "dropout.py",
        "dropout_regularizer * self.num_features * negative_entropy",
        "dropout_regularizer * negative_entropy",
        "the regularizer's entropy term not weighted by K",
        CONCRETE,
    ),
    Mutant(
        "late_switches_after_cutoff",
        "dropout_schedule.py",
        "return p if epoch >= cutoff else 0.0",
        "return p if epoch > cutoff else 0.0",
        "late dropout switches on after the cutoff epoch's first step",
        SCHEDULE,
    ),
    Mutant(
        "early_ramp_off_by_one",
        "dropout_schedule.py",
        "return p * (1 - epoch / cutoff) if",
        "return p * (1 - epoch / (cutoff + 1)) if",
        "early linear ramp aims at cutoff + 1",
        SCHEDULE,
    ),
    Mutant(
        "logged_p_is_keep",
        "dropout.py",
        "return {roles[name]: layer.p.item() if isinstance(layer, ConcreteDropout) else layer.p for",
        "return {roles[name]: 1 - layer.p.item() if isinstance(layer, ConcreteDropout) else layer.p for",
        "dropout/p and hp/p_ of a learned layer log the keep probability",
        CONCRETE,
    ),
    Mutant(
        "train_end_keeps_schedule",
        "dropout_schedule.py",
        "            layers[name].p = p\n",
        "            pass\n",
        "on_train_end leaves the last scheduled rates for test and predict",
        SCHEDULE,
    ),
    Mutant(
        "concrete_pairs_every_next",
        "learned_rates.py",
        "            pairs.append((waiting, module))\n            waiting = None\n",
        "            pairs.append((waiting, module))\n",
        "a concrete layer is paired with every Linear/Conv2d after it",
        CONCRETE,
    ),
    Mutant(
        "summary_population_std",
        "sweep_summary.py",
        "statistics.stdev(values) if len(values) > 1",
        "statistics.pstdev(values) if len(values) > 1",
        "the summary's std over seeds with ddof=0",
        SUMMARY,
    ),
    Mutant(
        "summary_median",
        "sweep_summary.py",
        "statistics.fmean(values) if values else math.nan",
        "statistics.median(values) if values else math.nan",
        "the summary's mean is the median over seeds",
        SUMMARY,
    ),
    Mutant(
        "error_bars_are_std",
        "sweep_summary.py",
        "return 0.0 if math.isnan(std) else std / math.sqrt(n)",
        "return 0.0 if math.isnan(std) else std",
        "the figure's error bars are one std, not one standard error",
        SUMMARY,
    ),
    Mutant(
        "gap_loss_maximized",
        "tuning.py",
        '"gap/loss": "minimize",',
        '"gap/loss": "maximize",',
        "--tune.metric=gap/loss maximized",
        TUNE,
    ),
    Mutant(
        "grid_keeps_median_pruner",
        "tuning.py",
        'pruner = "none" if grid or options.folds else options.pruner or "median"',
        'pruner = "none" if options.folds else options.pruner or "median"',
        "a grid's trials can be pruned",
        TUNE,
    ),
    Mutant(
        "report_step_is_epoch",
        "tuning.py",
        "self.trial.report(value, step=self.validations)",
        "self.trial.report(value, step=trainer.current_epoch)",
        "a trial reports by epoch, not by validation",
        TUNE,
    ),
    Mutant(
        "rng_restored_in_evaluations",
        "checkpointing.py",
        "        if not self.fitting:\n            return\n",
        "",
        "validate/test/predict restore the checkpoint's random state",
        EVALUATE,
    ),
    Mutant(
        "image_16_bit_by_255",
        "data/image_files.py",
        "image = image.float() / torch.iinfo(image.dtype).max",
        "image = image.float() / 255",
        "every image file divided by 255, 16-bit ones too",
        IMAGE_FILES,
    ),
    Mutant(
        "evaluations_numbered_from_1",
        "cli.py",
        "        number = 0\n        while (home",
        "        number = 1\n        while (home",
        "the first evaluation of a run is test_1",
        EVALUATE,
    ),
    Mutant(
        "prediction_path_by_batch",
        "prediction.py",
        '"path": [str(files[i]) for i in batch_indices] if files else None,',
        '"path": [str(files[i]) for i in range(len(batch_indices))] if files else None,',
        "predictions.csv's path column by the position in the batch, not the image's index",
        IMAGE_FILES,
    ),
]


# Issue 27: the audit of issues 21-26's code (python scripts/mutants.py --group issue27).
ISSUE27_MUTANTS = [
    Mutant(
        "rates_weight_decayed",
        "learned_rates.py",
        '{"params": rates, "weight_decay": 0.0, "lr": dropout_lr}',
        '{"params": rates, "lr": dropout_lr}',
        "the learned rates' group decayed with --model.weight_decay > 0",
        ["tests/test_classifier.py", "tests/test_data_size.py", *CONCRETE],
    ),
    Mutant(
        "validate_logs_rates",
        "classifier.py",
        "        if self.trainer.state.fn != TrainerFn.FITTING:  # validate: no HParams session, no new rates\n"
        "            return\n",
        "",
        "validate logs dropout/p and hp/p",
        ["tests/test_classifier.py", *CONCRETE, *SCHEDULE],
    ),
    Mutant(
        "loose_ckpt_in_grandparent",
        "cli.py",
        'run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent',
        "run_dir = checkpoint.parent.parent",
        "test --ckpt_path=model.ckpt writes into its grandparent's test_0",
        EVALUATE,
    ),
    Mutant(
        "constant_accepts_linear_ramp",
        "dropout_schedule.py",
        'if cutoff is not None or ramp != "constant":',
        "if cutoff is not None:",
        "dropout_ramp=linear without a schedule accepted and ignored",
        SCHEDULE,
    ),
    Mutant(
        "grid_seeds_inner",
        "tuning.py",
        "        for outer in itertools.product(*(range(p.low, p.high + 1) for p in repeats))\n"
        "        for values in itertools.product(*(p.choices for p in params))\n",
        "        for values in itertools.product(*(p.choices for p in params))\n"
        "        for outer in itertools.product(*(range(p.low, p.high + 1) for p in repeats))\n",
        "a grid runs every seed of a point before the next point",
        [*TUNE, "tests/test_folds.py"],
    ),
    Mutant(
        "summary_std_from_3_seeds",
        "sweep_summary.py",
        "if len(values) > 1 else math.nan",
        "if len(values) > 2 else math.nan",
        "the summary's std needs 3 seeds: 2 give empty std cells",
        SUMMARY,
    ),
    Mutant(
        "seeds_min_over_metrics",
        "sweep_summary.py",
        'return max(row[f"{metric}_count"] for metric in SUMMARY_METRICS)',
        'return min(row[f"{metric}_count"] for metric in SUMMARY_METRICS)',
        "a metric missing from every run makes the title say 0 seeds",
        SUMMARY,
    ),
    Mutant(
        "grid_int_range_open",
        "tuning.py",
        "range(int(param.low), int(param.high) + 1)",
        "range(int(param.low), int(param.high))",
        "a grid over an int range drops its upper end",
        TUNE,
    ),
]

GROUPS = {
    "first": MUTANTS,
    "new": NEW_CODE_MUTANTS,
    "issue27": ISSUE27_MUTANTS,
    "all": MUTANTS + NEW_CODE_MUTANTS + ISSUE27_MUTANTS,
}


def mutated_lines(mutant: Mutant, text: str) -> set[int]:
    """The lines of the function holding the change (all its lines: coverage may record any line of a
    multi-line statement); empty for a change outside any function."""
    start = text[: text.index(mutant.old)].count("\n") + 1
    end = start + mutant.old.count("\n")
    functions = [
        node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.lineno <= start and end <= node.end_lineno
    ]
    if not functions:
        return set()
    inner = max(functions, key=lambda node: node.lineno)
    return set(range(inner.lineno, inner.end_lineno + 1))


def covering_tests(coverage_file: str, source: Path, lines: set[int]) -> set[str]:
    """Test node ids whose coverage context ran one of ``lines`` of ``source``."""
    import coverage  # only with --coverage; not a dependency of the project

    data = coverage.CoverageData(coverage_file)
    data.read()
    suffix = str(source.relative_to(ROOT / "src"))
    tests: set[str] = set()
    for measured in data.measured_files():
        if not measured.endswith(suffix):
            continue
        for line, contexts in (data.contexts_by_lineno(measured) or {}).items():
            if line in lines:
                tests.update(context.split("|")[0] for context in contexts if context)
    return tests


def run_tests(tests: list[str], timeout: float) -> tuple[str, list[str], float]:
    """('killed' | 'survived' | 'error', failing test ids, seconds)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        # Never cache the mutant's bytecode: a restored file of the same size and second could load it.
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.monotonic()
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", [], time.monotonic() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.MULTILINE)
    if result.returncode == 0:
        return "survived", [], time.monotonic() - start
    if failed:
        return "killed", failed, time.monotonic() - start
    return "error", [result.stdout[-2000:] + result.stderr[-2000:]], time.monotonic() - start


def apply_and_test(
    mutant: Mutant, coverage_file: str | None, only: list[str] | None, timeout: float
) -> tuple[str, list[str], int, float]:
    path = ROOT / SRC / mutant.file
    original = path.read_bytes()
    text = original.decode()
    if text.count(mutant.old) != 1:
        return "stale", [f"old text occurs {text.count(mutant.old)} times in {mutant.file}"], 0, 0.0
    tests = set(only or mutant.tests)
    if coverage_file and not only:
        tests |= covering_tests(coverage_file, path, mutated_lines(mutant, text))
    # A node id already inside a chosen file runs with it; pytest would run it twice.
    files = {test for test in tests if "::" not in test}
    chosen = sorted(test for test in tests if "::" not in test or test.split("::")[0] not in files)
    chosen = [test for test in chosen if (ROOT / test.split("::")[0]).exists()]
    try:
        path.write_text(text.replace(mutant.old, mutant.new))
        outcome, failed, seconds = run_tests(chosen, timeout)
    finally:
        path.write_bytes(original)
    if path.read_bytes() != original:
        raise SystemExit(f"{path} was not restored: check it with git diff")
    return outcome, failed, len(chosen), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--coverage", help="a coverage data file with per-test contexts (--cov-context=test)")
    parser.add_argument(
        "--tests", action="append", help="run only this test file or node id for every mutant (repeatable)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mutant")
    parser.add_argument("--list", action="store_true", help="list the mutants and check that each applies")
    parser.add_argument(
        "--group",
        choices=GROUPS,
        default="all",
        help="first: the first audit's survivors; new: the changes to issues 18-20's code; issue27: the changes to "
        "issues 21-26's code; all: every group",
    )
    args = parser.parse_args()
    # Ctrl-C raises KeyboardInterrupt; make a kill (SIGTERM) unwind too, so the file is restored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    group = GROUPS[args.group]
    unknown = set(args.names) - {m.name for m in group}
    if unknown:
        parser.error(f"unknown mutants in --group={args.group}: {', '.join(sorted(unknown))}")
    chosen = [m for m in group if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            found = (ROOT / SRC / m.file).read_text().count(m.old)
            print(f"{m.name:28} {m.file:22} {'ok' if found == 1 else f'STALE ({found} matches)':8} {m.description}")
        return
    rows = []
    for mutant in chosen:
        outcome, failed, n_tests, seconds = apply_and_test(mutant, args.coverage, args.tests, args.timeout)
        rows.append((mutant, outcome, failed))
        print(f"{mutant.name:28} {outcome:8} {seconds:6.0f} s  {n_tests:3} selections  {' '.join(failed)}", flush=True)
    killed = sum(outcome == "killed" for _, outcome, _ in rows)
    print(f"\n{killed} of {len(rows)} killed")
    print("\n| mutant | file | change | outcome | killed by |\n|---|---|---|---|---|")
    for mutant, outcome, failed in rows:
        by = "<br>".join(failed) if outcome == "killed" else ""
        print(f"| {mutant.name} | {mutant.file} | {mutant.description} | {outcome} | {by} |")


if __name__ == "__main__":
    main()
