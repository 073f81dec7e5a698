"""Make the images the README shows, from real runs: python scripts/make_images.py

Trains four short MLP runs on the embedded digits (hidden-layer dropout p = 0, 0.3, 0.5, 0.7, no input
dropout, 15 epochs, tested with MC dropout) into --runs (default runs/images), or reads the runs already
there, and writes into docs/img/. On 2026-12-03 the whole script took 6 min 43 s wall and 2 min 38 s of CPU
on the 2-core CPU machine, shared with other jobs; its runs are about four times the work of
`python train.py`, which took 25 s wall there unshared (2026-11-29).

- tensorboard_gap.png       TensorBoard's Custom Scalars tab (the gap charts), a headless Chromium screenshot
- tensorboard_hparams.png   TensorBoard's HParams tab, the same way
- gap_vs_epoch.png          gap/loss and val/acc against the epoch, one line per dropout rate (matplotlib)
- reliability.png           the reliability diagram train.py's test drew into the p = 0.5 run (deterministic and MC)
- sweep_mlp.png, sweep_cnn.png  with --sweeps DIR: the summary figures of the grid studies mlp and cnn under DIR
                            (docs/sweeps.md's commands), drawn again from their optuna.db by tune.py
- data_size.png, data_size_learned.png, sweep_headline.png  with --data-size DIR: the same for the studies size,
                            size_learned and headline under DIR (docs/data_size.md's commands)

Needs this project's environment (matplotlib, tensorboard, pillow come with it) and Chromium
(Debian/Ubuntu: apt-get install chromium; or --chromium PATH). It installs nothing.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from io import BytesIO
from pathlib import Path

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

ROOT = Path(__file__).resolve().parents[1]
RATES = (0.0, 0.3, 0.5, 0.7)
RELIABILITY_RATE = 0.5
TRAIN = [
    "--trainer.logger=TensorBoardLogger",
    "--model.input_dropout=0",
    "--model.mc_samples=20",
    "--trainer.max_epochs=15",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # TensorBoard is a single-page app: let it fetch and draw before the picture is taken.
    "--virtual-time-budget=20000",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "images", help="where the runs are, or go")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the images go")
    parser.add_argument("--chromium", default=None, help="the Chromium (or Chrome) executable")
    parser.add_argument("--sweeps", type=Path, default=None, help="the root of docs/sweeps.md's grid studies")
    parser.add_argument("--data-size", type=Path, default=None, help="the root of docs/data_size.md's grid studies")
    args = parser.parse_args()
    found = (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome"))
    chromium = args.chromium or next(filter(None, found), None)
    if not chromium:
        sys.exit("Chromium is missing: install it (Debian/Ubuntu: apt-get install chromium) or pass --chromium PATH.")
    logs = args.runs / "lightning_logs"
    if logs.exists():
        print(f"Reading the runs under {logs}")
    else:
        for rate in RATES:
            print(f"Training the MLP with dropout p = {rate:g} into {args.runs}", flush=True)
            cmd = [
                sys.executable,
                "train.py",
                f"--model.dropout={rate}",
                *TRAIN,
                f"--trainer.logger.version=dropout_{rate:g}",  # the run's name in TensorBoard
                f"--trainer.default_root_dir={args.runs}",
            ]
            result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    runs = read_runs(logs)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_gap_vs_epoch(runs, args.out / "gap_vs_epoch.png")
    save_reliability_diagram(runs, args.out / "reliability.png")
    with tensorboard(logs) as url:
        # Smoothing off (a setting TensorBoard reads from the address): 15 points a run, drawn as logged.
        screenshot(chromium, f"{url}/#custom_scalars&_smoothingWeight=0", (1900, 450), args.out / "tensorboard_gap.png")
        screenshot(chromium, f"{url}/#hparams", (2100, 330), args.out / "tensorboard_hparams.png")
    if args.sweeps is not None:
        for study in ("mlp", "cnn"):
            draw_sweep(args.sweeps, study, args.out / f"sweep_{study}.png")
    if args.data_size is not None:
        studies = {"size": "data_size", "size_learned": "data_size_learned", "headline": "sweep_headline"}
        for study, image in studies.items():
            draw_sweep(args.data_size, study, args.out / f"{image}.png")
    for path in sorted(args.out.glob("*.png")):
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size // 1024} KB")


def draw_sweep(root: Path, study: str, path: Path) -> None:
    """tune.py's summary.png of one grid study, drawn again from its storage, copied to ``path``."""
    cmd = [sys.executable, "tune.py", f"--trainer.default_root_dir={root}", f"--tune.study_name={study}"]
    result = subprocess.run([*cmd, "--tune.summary_only=true"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} --tune.summary_only=true failed:\n{result.stderr[-2000:]}")
    shutil.copyfile(root / study / "summary.png", path)


def read_runs(logs: Path) -> dict[float, EventAccumulator]:
    """The runs under ``logs`` by their hidden-layer dropout rate (from their HParams summary)."""
    runs = {}
    for run_dir in sorted(logs.iterdir()):
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        content = events.PluginTagToContent("hparams").get("_hparams_/session_start_info")
        if content is None:
            continue  # not a training run
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        runs[round(hparams["dropout"].number_value, 3)] = events
    if not runs:
        sys.exit(f"No training runs under {logs}: remove the folder to train them again.")
    return dict(sorted(runs.items()))


def plot_gap_vs_epoch(runs: dict[float, EventAccumulator], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.8), layout="constrained")
    panels = figure.subplots(1, 2)
    for rate, events in runs.items():
        for axes, tag in zip(panels, ("gap/loss", "val/acc"), strict=True):
            values = [event.value for event in events.Scalars(tag)]  # one per epoch: validation runs every epoch
            axes.plot(range(1, len(values) + 1), values, marker=".", label=f"p = {rate:g}")
    panels[0].set(xlabel="epoch", ylabel="gap/loss = val/loss − train_eval/loss", title="generalization gap (loss)")
    panels[1].set(xlabel="epoch", ylabel="val/acc", title="validation accuracy")
    panels[0].axhline(0, color="grey", linewidth=0.8)
    panels[0].legend(title="hidden-layer dropout")
    figure.suptitle("MLP on the embedded digits, no input dropout, seed 0")
    figure.savefig(path, dpi=90)


def save_reliability_diagram(runs: dict[float, EventAccumulator], path: Path) -> None:
    """The figure train.py's test wrote into the run's Images tab, as it is there."""
    events = runs.get(RELIABILITY_RATE) or next(iter(runs.values()))
    image = events.Images("test/reliability_diagram")[-1].encoded_image_string
    Image.open(BytesIO(image)).save(path, optimize=True)


class tensorboard:
    """``tensorboard --logdir LOGS`` on a free local port, for the length of a ``with`` block."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs

    def __enter__(self) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        logdir = os.path.relpath(self.logs, ROOT)  # as the picture shows it
        cmd = [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", f"--port={port}", "--host=127.0.0.1"]
        self.process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:  # up, and every run loaded
                with urllib.request.urlopen(f"{url}/data/runs", timeout=2) as response:
                    if len(json.load(response)) >= len(list(self.logs.iterdir())):
                        return url
            except OSError:
                pass
            time.sleep(1)
        self.process.kill()
        sys.exit(f"TensorBoard did not start on port {port} within 60 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait()


def screenshot(chromium: str, url: str, window: tuple[int, int], path: Path) -> None:
    """A headless Chromium screenshot of ``url`` in a window of that size."""
    with tempfile.TemporaryDirectory() as profile:
        raw = Path(profile) / "screenshot.png"
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            f"--screenshot={raw}",
            url,
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, env={**os.environ, "LANG": "en_US.UTF-8"})
        Image.open(raw).save(path, optimize=True)


if __name__ == "__main__":
    main()
