"""The cost of Monte Carlo dropout: images per second of ``predict`` for N = 1, 10, 30 passes.

    python benchmarks/mc_dropout.py                  # MLP and CNN, the template's defaults
    python benchmarks/mc_dropout.py --threads 1 --batches 8 --repeats 5

Each measurement is ``Trainer.predict`` over the same batches of the embedded test digits (what
``python train.py predict`` runs, without the CSV). The cost of N passes is given relative to N
times one deterministic pass: below 1.00x, N passes cost less than N separate predictions (the
loop's fixed costs are paid once). Two ways of sampling side by side: ``loop`` (Classifier's
``sample_probs``: one forward per pass) and ``batched`` (one forward of the batch repeated N
times). All runs alternate in one process; the figures are medians. Speed does not depend on the
weights, so the networks are freshly initialized.
"""

import argparse
import datetime
import logging
import statistics
import time
import warnings

import lightning as L
import torch

from dropout_lab import CNNClassifier, MLPClassifier, MNIST5kDataModule


class Batched:
    """``sample_probs`` as one forward of the batch repeated ``mc_samples`` times."""

    def sample_probs(self, x):
        out = self(x.repeat(self.mc_samples, *[1] * (x.dim() - 1))).softmax(dim=-1)
        return out.unflatten(0, (self.mc_samples, len(x)))


class BatchedMLP(Batched, MLPClassifier):
    pass


class BatchedCNN(Batched, CNNClassifier):
    pass


def seconds(model, data, batches: int) -> float:
    trainer = L.Trainer(
        limit_predict_batches=batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.predict(model, data, return_predictions=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batches", type=int, default=4, help="batches of 64 test digits per predict")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = MNIST5kDataModule(batch_size=64)
    images = args.batches * 64
    samples = (1, 10, 30)
    print(f"# {datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {images} images")
    print("| model | sampling | N | images/s | cost of N passes / (N x one pass) |")
    print("|---|---|---|---|---|")
    for name, classes in [("MLP", (MLPClassifier, BatchedMLP)), ("CNN", (CNNClassifier, BatchedCNN))]:
        torch.manual_seed(0)
        models = {
            (way, n): cls(mc_samples=n) for way, cls in zip(("loop", "batched"), classes, strict=True) for n in samples
        }
        for model in models.values():
            model.load_state_dict(models["loop", 1].state_dict())
        times: dict[tuple[str, int], list[float]] = {key: [] for key in models}
        seconds(models["loop", 1], data, 1)  # warm-up: data loading, first allocations
        for _ in range(args.repeats):
            for key, model in models.items():  # interleaved: a slow moment of the machine hits all of them
                times[key].append(seconds(model, data, args.batches))
        one = statistics.median(times["loop", 1])
        for (way, n), measured in times.items():
            if way == "batched" and n == 1:
                continue  # the same computation as the loop's
            median = statistics.median(measured)
            print(f"| {name} | {way} | {n} | {images / median:.0f} | {median / (n * one):.2f}x |")


if __name__ == "__main__":
    main()
