"""What starting DataLoader workers anew every epoch costs, against persistent workers and no workers.

    python benchmarks/workers.py --epochs 5 --repeats 5

The DataModules start their workers anew each epoch (``persistent_workers=False``) so that a resumed
run draws the workers' seeds as the run it continues did. This times what a training run's data loading
does in an epoch, without the model: one pass over the training loader and both validation loaders
of the embedded digits, for each setting in turn, interleaved, and prints the median per epoch.
"""

import argparse
import statistics
import time

from torch.utils.data import DataLoader

from dropout_lab import MNIST5kDataModule


def loaders(data: MNIST5kDataModule, num_workers: int, persistent: bool) -> list[DataLoader]:
    def make(dataset, shuffle=False):
        return DataLoader(
            dataset,
            batch_size=data.hparams.batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            collate_fn=lambda batch: batch,
            persistent_workers=persistent,
        )

    return [make(data.train_set, shuffle=True), make(data.val_set), make(data.train_eval_set)]


def seconds_per_epoch(setting: list[DataLoader], epochs: int) -> float:
    start = time.perf_counter()
    for _ in range(epochs):
        for loader in setting:
            for _ in loader:
                pass
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = MNIST5kDataModule()
    data.setup("fit")
    settings = {
        "num_workers=0": loaders(data, 0, False),
        "num_workers=1, started each epoch (ours)": loaders(data, 1, False),
        "num_workers=1, persistent": loaders(data, 1, True),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, setting in settings.items():
            times[name].append(seconds_per_epoch(setting, args.epochs))
    for name, measured in times.items():
        print(f"{name:45s} {1000 * statistics.median(measured):8.1f} ms per epoch (median of {args.repeats})")


if __name__ == "__main__":
    main()
