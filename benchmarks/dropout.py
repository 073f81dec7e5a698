"""Forward + backward time of dropout implementations, side by side, and the bytes kept for backward.

    python benchmarks/dropout.py           # on the GPU if there is one, else on the CPU
    python benchmarks/dropout.py --cpu     # on the CPU even where there is a GPU

Each implementation is timed as ``torch.autograd.grad(layer(x), x, g)``, as inside a network,
where the gradient goes on to the layer below. The implementations take turns in every repeat,
so a slower or busier moment of the machine hits all of them alike; the time is the median
over the repeats, and the ratio is to ``nn.Dropout`` measured in the same run.
"""

import argparse
import datetime
import platform
import statistics
import time

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from dropout_lab import CustomDropout
from dropout_lab.dropout import FAST_PATH_MIN_NUMEL, fast_dropout, triton_dropout

P = 0.5
ROW = "{:>10} {:>9}  {:<16} {:>9} {:>14} {:>16}"


def course_dropout(x: torch.Tensor) -> torch.Tensor:
    """The course's version: a Bernoulli draw of a full tensor of 1 - p, divided by 1 - p, times x."""
    return x * (torch.bernoulli(torch.full_like(x, 1 - P)) / (1 - P))


def implementations(device: torch.device) -> dict:
    layers = {"nn.Dropout": nn.Dropout(P), "course": course_dropout, "CustomDropout": CustomDropout(P)}
    if device.type == "cuda" and triton_dropout() is not None:
        layers["Triton (forced)"] = lambda x: fast_dropout(x, P)
    return layers


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "absent"
    return triton.__version__


def saved_bytes_per_element(layer, x: torch.Tensor) -> float:
    """Bytes that autograd keeps for backward per element of x, x itself excluded."""
    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    return sum(t.numel() * t.element_size() for t in saved if t.data_ptr() != x.data_ptr()) / x.numel()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(layer, x: torch.Tensor, g: torch.Tensor, calls: int) -> float:
    sync(x.device)
    start = time.perf_counter()
    for _ in range(calls):
        torch.autograd.grad(layer(x), x, g)
    sync(x.device)
    return (time.perf_counter() - start) / calls


def measure(layers: dict, x: torch.Tensor, g: torch.Tensor, repeats: int, block_s: float) -> dict[str, float]:
    """Median seconds per forward + backward of each layer, the layers interleaved in every repeat."""
    calls = {}
    for name, layer in layers.items():
        seconds_per_call(layer, x, g, 2)  # warm-up: Triton compiles, caches fill
        calls[name] = max(1, round(block_s / seconds_per_call(layer, x, g, 3)))
    times = {name: [] for name in layers}
    names = list(layers)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # rotate who goes first
            times[name].append(seconds_per_call(layers[name], x, g, calls[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where there is a GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per implementation (median)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if device.type == "cuda":
        sizes, dtypes = [2**20, 2**24, 2**26], [torch.float32, torch.bfloat16, torch.float16]
        repeats, block_s, name = 15, 0.05, torch.cuda.get_device_name()
    else:
        sizes, dtypes = [2**18, 2**22], [torch.float32, torch.bfloat16]
        repeats, block_s = 7, 0.15
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    repeats = args.repeats or repeats
    print(f"device: {device.type} ({name})")
    print(f"torch {torch.__version__}, triton {triton_version()}")
    print(f"date: {datetime.datetime.now().isoformat(timespec='minutes')}")
    print(f"p = {P}; forward+backward = torch.autograd.grad(layer(x), x, g); median of {repeats} interleaved repeats")
    print(f"CustomDropout takes the Triton path on CUDA from {FAST_PATH_MIN_NUMEL} elements, else the plain path\n")
    print(ROW.format("elements", "dtype", "implementation", "ms", "vs nn.Dropout", "bytes/elem kept"))

    torch.manual_seed(0)
    for size in sizes:
        for dtype in dtypes:
            x = torch.randn(size, device=device, dtype=dtype, requires_grad=True)
            g = torch.randn(size, device=device, dtype=dtype)
            layers = implementations(device)
            seconds = measure(layers, x, g, repeats, block_s)
            for impl, layer in layers.items():
                ratio = seconds[impl] / seconds["nn.Dropout"]
                kept = saved_bytes_per_element(layer, x)
                ms = seconds[impl] * 1e3
                print(ROW.format(size, str(dtype)[6:], impl, f"{ms:.3f}", f"{ratio:.2f}x", f"{kept:.2f}"))
            print()


if __name__ == "__main__":
    main()
