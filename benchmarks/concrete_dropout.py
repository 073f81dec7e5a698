"""Forward + backward time of ConcreteDropout against CustomDropout on the CPU, side by side in one run.

    python benchmarks/concrete_dropout.py              # torch's default number of threads
    python benchmarks/concrete_dropout.py --threads 1

Each layer is timed as ``torch.autograd.grad(layer(x), [x, *layer.parameters()], g)``, as inside a
network: the gradient goes on to the layer below and, for ConcreteDropout, to its p. The layers
take turns in every repeat, so a busier moment of the machine hits all of them alike; the time is
the median over the repeats, and the ratio is to CustomDropout (2d: CustomDropout2d) in the same run.
The regularizer is timed apart, on a Linear layer of the width that follows (it runs once a step).
"""

import argparse
import datetime
import platform
import statistics
import time

import torch
from torch import nn

from dropout_lab import ConcreteDropout, ConcreteDropout2d, CustomDropout, CustomDropout2d

P = 0.5
ROW = "{:>18}  {:<18} {:>9} {:>14}"


def seconds_per_call(step, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def forward_backward(layer: nn.Module, x: torch.Tensor, g: torch.Tensor):
    inputs = [x, *layer.parameters()]
    return lambda: torch.autograd.grad(layer(x), inputs, g)


def measure(steps: dict, repeats: int, block_s: float) -> dict[str, float]:
    """Median seconds per call of each step, the steps interleaved in every repeat."""
    calls = {}
    for name, step in steps.items():
        seconds_per_call(step, 2)  # warm-up
        calls[name] = max(1, round(block_s / seconds_per_call(step, 3)))
    times = {name: [] for name in steps}
    names = list(steps)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # rotate who goes first
            times[name].append(seconds_per_call(steps[name], calls[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def regularizer_step(width: int, out: int):
    layer, following = ConcreteDropout(width, P), nn.Linear(width, out)
    inputs = [*layer.parameters(), *following.parameters()]
    return lambda: torch.autograd.grad(layer.regularizer(following, 1e-6, 1e-5), inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per layer (median)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"device: cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"torch {torch.__version__}, date: {datetime.datetime.now().isoformat(timespec='minutes')}")
    print(f"p = {P}; median of {args.repeats} interleaved repeats\n")
    print(ROW.format("input shape", "layer", "ms", "vs Custom"))

    torch.manual_seed(0)
    # The shapes of the template's networks at batch 64: the MLP's input and hidden layers, the CNN's conv maps.
    cases = [
        ((64, 784), CustomDropout(P), ConcreteDropout(784, P)),
        ((64, 1024), CustomDropout(P), ConcreteDropout(1024, P)),
        ((64, 32, 14, 14), CustomDropout2d(P), ConcreteDropout2d(32, P)),
        ((256, 1024), CustomDropout(P), ConcreteDropout(1024, P)),
    ]
    for shape, custom, concrete in cases:
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        steps = {
            type(custom).__name__: forward_backward(custom, x, g),
            type(concrete).__name__: forward_backward(concrete, x, g),
        }
        seconds = measure(steps, args.repeats, block_s=0.1)
        reference = seconds[type(custom).__name__]
        for name, s in seconds.items():
            print(ROW.format(str(tuple(shape)), name, f"{s * 1e3:.3f}", f"{s / reference:.2f}x"))
        print()

    for width, out in ((784, 1024), (1024, 1024)):
        (s,) = measure({"regularizer": regularizer_step(width, out)}, args.repeats, block_s=0.1).values()
        print(f"regularizer on a Linear({width}, {out}), value and gradients: {s * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
