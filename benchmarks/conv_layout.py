"""Why the CNN runs its convolutions channels-last: NCHW against NHWC, side by side in one process.

    python benchmarks/conv_layout.py                   # the recipe's CNN (32, 64 channels, head 256), batch 64
    python benchmarks/conv_layout.py --threads 1 --batch-size 128

The same CNN is built four times (with and without BatchNorm, each in the NCHW layout PyTorch uses by
default and in the channels-last layout nets.CNN uses) and each takes its turn, in one round after
another, at one training step (forward, cross-entropy, backward, AdamW) and one evaluation batch (eval
mode, no_grad) on the same batch of random images. The time is the median over all turns; the ratio is
channels-last's time over NCHW's for the same network.
"""

import argparse
import datetime
import statistics
import time

import torch
import torch.nn.functional as F

from dropout_lab import CNNClassifier


def nchw(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` (a nets.CNN) with its conv weights and its input in PyTorch's default NCHW layout."""
    net.features.to(memory_format=torch.contiguous_format)
    net.forward = lambda x: net.head(net.features(x))
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=40, help="turns of each network at each task")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    nets = {}
    for batch_norm in (False, True):
        for layout in ("NCHW", "channels-last"):
            net = CNNClassifier(channels=(32, 64), hidden=256, batch_norm=batch_norm).net
            nets[(batch_norm, layout)] = (nchw(net) if layout == "NCHW" else net, torch.optim.AdamW(net.parameters()))
    x, y = torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))

    def train_step(net, optimizer) -> None:
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def eval_batch(net, optimizer) -> None:
        net.eval()
        with torch.no_grad():
            net(x)
        net.train()

    tasks = {"training step": train_step, "evaluation batch": eval_batch}
    seconds = {(key, task): [] for key in nets for task in tasks}
    for round_ in range(args.rounds + 2):  # the first two rounds warm up and are not counted
        for key, (net, optimizer) in nets.items():
            for task, fn in tasks.items():
                start = time.perf_counter()
                fn(net, optimizer)
                if round_ >= 2:
                    seconds[(key, task)].append(time.perf_counter() - start)
    median = {key: statistics.median(values) * 1e3 for key, values in seconds.items()}

    print(
        f"{datetime.date.today()}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
        f"batch {args.batch_size}  {args.rounds} rounds, median wall ms"
    )
    print(f"{'network':<16} {'task':<18} {'NCHW':>8} {'channels-last':>14} {'ratio':>7}")
    for batch_norm in (False, True):
        for task in tasks:
            before, after = median[((batch_norm, "NCHW"), task)], median[((batch_norm, "channels-last"), task)]
            name = "CNN + BatchNorm" if batch_norm else "CNN"
            print(f"{name:<16} {task:<18} {before:>8.1f} {after:>14.1f} {after / before:>6.2f}x")


if __name__ == "__main__":
    main()
