"""What --data.augment=true costs: one augmented batch against one training step of the CNN, side by side.

    python benchmarks/augment.py                       # batch 64, the embedded digits, the CNN of cnn_mnist5k.yaml
    python benchmarks/augment.py --threads 1 --batch-size 128

Three things are timed in turns, in one process, so a busier moment of the machine hits all alike:
a training batch as the DataLoader gets it without augmentation (index, normalize) and with it
(index, random affine per image, normalize), and one training step of CNNClassifier's network
(forward, cross-entropy, backward, AdamW step) on a batch already made. The time is the median over the
repeats, wall clock and CPU; the last line is the augmentation's extra time as a share of the step.
"""

import argparse
import datetime
import statistics
import time

import torch
import torch.nn.functional as F

from dropout_lab import CNNClassifier, MNIST5kDataModule

ROW = "{:<22} {:>9} {:>9} {:>18}"


def median_times(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of each, per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of taking turns; the median is over all")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    plain, augmented = MNIST5kDataModule(), MNIST5kDataModule(augment=True)
    plain.setup("fit")
    augmented.setup("fit")
    net = CNNClassifier(channels=(32, 64), hidden=256, dropout=0.5, conv_dropout=0.1, batch_norm=True).net  # the recipe
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def indices() -> list[int]:
        return torch.randint(0, len(plain.train_set), (args.batch_size,)).tolist()

    x, y = augmented.train_set.__getitems__(indices())

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    pieces = {
        "batch, augment=false": lambda: plain.train_set.__getitems__(indices()),
        "batch, augment=true": lambda: augmented.train_set.__getitems__(indices()),
        "CNN training step": step,
    }
    for fn in pieces.values():  # warm up
        fn()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pieces}
    for _ in range(args.rounds):
        for name, fn in pieces.items():
            samples[name].append(median_times(fn, args.repeats))
    times = {name: tuple(statistics.median(s[i] for s in runs) for i in (0, 1)) for name, runs in samples.items()}

    print(
        f"{datetime.date.today()}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
        f"batch {args.batch_size}  {args.rounds} rounds x {args.repeats} calls, medians"
    )
    print(ROW.format("", "wall ms", "CPU ms", "extra / step"))
    for name, (wall, cpu) in times.items():
        print(ROW.format(name, f"{wall * 1e3:.2f}", f"{cpu * 1e3:.2f}", ""))
    # The augmentation's extra time as a share of the step, on each clock.
    shares = [
        (times["batch, augment=true"][i] - times["batch, augment=false"][i]) / times["CNN training step"][i]
        for i in (0, 1)
    ]
    print(ROW.format("augmentation's extra", "", "", f"{shares[0]:.1%} wall, {shares[1]:.1%} CPU"))


if __name__ == "__main__":
    main()
