"""The template's training loop against a plain PyTorch loop: same net, data, batches and steps.

    python benchmarks/train_loop.py                          # MLP and CNN on the embedded digits
    python benchmarks/train_loop.py --random60k              # also on 60,000 random MNIST-shaped images
    python benchmarks/train_loop.py --template-args=--trainer.enable_progress_bar=false

The template run is what ``python train.py --trainer.max_steps=STEPS`` does: DropoutLabCLI
builds the Trainer with this template's callbacks, TensorBoard logger and checkpointing, and
``trainer.fit`` is timed. Validation is off in the template (``limit_val_batches=0``) because
the plain loop has none: both do STEPS optimizer steps and nothing else. The plain loop gets
the same net (the classifier's ``.net``), the same AdamW with the same cosine schedule, and the
same DataLoader. The two alternate in one process; the ratio is of the medians. Both the wall
time and the process's CPU time are shown: on a machine shared with other work the CPU time
(with --threads=1) is the steadier measure of the work each loop does.

After the table comes where the template's extra time goes: the parts of its step that the
plain loop does not have, each timed from the inside during the template runs.
"""

import argparse
import contextlib
import datetime
import io
import logging
import statistics
import tempfile
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from dropout_lab import CNNClassifier, InMemoryDataModule, MLPClassifier, MNIST5kDataModule
from dropout_lab.cli import DropoutLabCLI
from dropout_lab.lr_schedule import cosine

BATCH_SIZE = 64


class RandomMNIST(InMemoryDataModule):
    """60,000 training and 10,000 test images of random pixels, shaped like MNIST."""

    input_shape = (1, 28, 28)
    mean, std = (0.5,), (0.29,)

    def __init__(self, batch_size: int = BATCH_SIZE) -> None:
        super().__init__(val_size=5000, batch_size=batch_size)

    def load(self):
        seeded = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (70_000, 1, 28, 28), dtype=torch.uint8, generator=seeded)
        labels = torch.randint(0, 10, (70_000,), generator=seeded)
        return images[:60_000], labels[:60_000], images[60_000:], labels[60_000:]


class Clock:
    """Wall and CPU seconds of a ``with`` block."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def timed(fn, label: str, totals: dict[str, float]):
    """``fn``, adding the seconds of each call to ``totals[label]``."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

    return wrapper


def time_pieces(cli: DropoutLabCLI, totals: dict[str, float]) -> None:
    """Time the parts of the template's step that the plain loop does not have (wrapping this run's objects)."""
    model, trainer = cli.model, cli.trainer
    pieces = {
        "classifier.py training_step: self.log_dict(train/loss, train/acc)": (model, "log_dict"),
        "Lightning: logger.log_metrics, TensorBoard writes": (trainer.logger, "log_metrics"),
        "Lightning: trainer.save_checkpoint by ModelCheckpoint, once per run": (trainer, "save_checkpoint"),
    }
    for callback in trainer.callbacks:
        for hook in ("on_train_batch_start", "on_train_batch_end"):
            if getattr(type(callback), hook) is not getattr(L.Callback, hook):  # only hooks it implements
                pieces[f"callback {type(callback).__name__}.{hook}"] = (callback, hook)
    for label, (owner, name) in pieces.items():
        setattr(owner, name, timed(getattr(owner, name), label, totals))


def template_fit(model: str, data: InMemoryDataModule, steps: int, extra_args: list[str], totals=None) -> Clock:
    """Seconds of ``trainer.fit`` for a Trainer and model built by the template's CLI."""
    with tempfile.TemporaryDirectory() as root:
        cli = DropoutLabCLI(
            [
                f"--model={model}",
                f"--trainer.max_steps={steps}",
                "--trainer.limit_val_batches=0",
                f"--trainer.default_root_dir={root}",
                *extra_args,
            ]
        )
        if totals is not None:
            time_pieces(cli, totals)
        # The progress bar writes on every step; a terminal would show it, here it is discarded.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with Clock() as clock:
                cli.trainer.fit(cli.model, data)
    return clock


def plain_fit(model_class: type, data: InMemoryDataModule, steps: int) -> Clock:
    """Seconds of a plain loop: forward, cross-entropy, backward, AdamW step, cosine schedule step."""
    torch.manual_seed(0)  # as the CLI's seed_everything_default
    model = model_class()  # its defaults, as in the template run; only the plain net is used
    net, hparams = model.net, model.hparams
    with Clock() as clock:  # like the template's: building the model is not timed
        optimizer = torch.optim.AdamW(net.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, steps))  # as Classifier
        step = 0
        while step < steps:
            for x, y in data.train_dataloader():
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                if step == steps:
                    break
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--cnn-steps", type=int, default=20, help="optimizer steps per run of the CNN")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each loop, alternating")
    parser.add_argument("--random60k", action="store_true", help="also train on 60,000 random MNIST-shaped images")
    parser.add_argument("--template-args", action="append", default=[], help="more train.py flags for the template")
    args = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "Seed set to 0", the model summary, ...
    warnings.filterwarnings("ignore", ".*args parameter is intended to run from within Python.*")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"device: cpu, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"date: {datetime.datetime.now().isoformat(timespec='minutes')}")
    print(f"batch size {BATCH_SIZE}; median of {args.repeats} alternating runs; template flags: {args.template_args}\n")
    print(f"{'':<33} {'wall seconds':^32}  {'CPU seconds':^32}")
    print(f"{'model':<14} {'data':<12} {'steps':>5}" + f" {'template':>9} {'plain':>7} {'template/plain':>15} " * 2)

    breakdowns = {}
    datasets = {"MNIST5k": MNIST5kDataModule(batch_size=BATCH_SIZE)}
    if args.random60k:
        datasets["random 60k"] = RandomMNIST()
    for data_name, data in datasets.items():
        data.setup("fit")  # decode once, outside the timings; fit's own setup() then returns at once
        for model_class, steps in [(MLPClassifier, args.steps), (CNNClassifier, args.cnn_steps)]:
            model = model_class.__name__
            template_fit(model, data, 2, args.template_args)  # warm-up: first-call costs of both loops
            plain_fit(model_class, data, 2)
            template, plain, totals = [], [], {}
            for _ in range(args.repeats):
                template.append(template_fit(model, data, steps, args.template_args, totals))
                plain.append(plain_fit(model_class, data, steps))
            line = f"{model:<14} {data_name:<12} {steps:>5}"
            for clock in ("wall", "cpu"):
                t = statistics.median(getattr(run, clock) for run in template)
                p = statistics.median(getattr(run, clock) for run in plain)
                line += f" {t:>9.2f} {p:>7.2f} {t / p:>14.2f}x "
            print(line)
            per_step = 1e3 / (args.repeats * steps)
            extra = statistics.median(run.wall for run in template) - statistics.median(run.wall for run in plain)
            breakdowns[f"{model} on {data_name}: template - plain = {extra / steps * 1e3:.2f} ms/step, of which"] = {
                label: seconds * per_step for label, seconds in totals.items()
            }

    for title, pieces in breakdowns.items():
        print(f"\n{title}")
        for label, ms in sorted(pieces.items(), key=lambda item: -item[1]):
            print(f"{ms:>8.3f} ms/step  {label}")


if __name__ == "__main__":
    main()
