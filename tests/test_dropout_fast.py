"""CustomDropout's fast path (the Triton kernel of dropout_triton.py), checked against the reference.

Without a GPU the kernel runs on the CPU through Triton's interpreter. ``TRITON_INTERPRET=1``
must be set before triton is first imported, and importing Lightning imports triton, so in an
ordinary test session the kernel tests are skipped here and run in a child pytest process
started by ``test_kernel_tests_pass_under_the_triton_interpreter``. On a CUDA machine they also
run in this process, on the GPU.
"""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from dropout_lab import CustomDropout
from dropout_lab.dropout import dropout, fast_dropout, use_fast_path

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if not HAS_TRITON:
    DEVICE, WHY = None, "Triton is not installed: CustomDropout always takes the plain path"
elif INTERPRETED:
    DEVICE, WHY = "cpu", ""
elif torch.cuda.is_available():
    DEVICE, WHY = "cuda", ""
else:
    DEVICE, WHY = None, "no CUDA device: run on the CPU by test_kernel_tests_pass_under_the_triton_interpreter"
needs_kernel = pytest.mark.skipif(DEVICE is None, reason=WHY)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N = 100_000  # the interpreter takes about 0.2 s per 100k elements; the keep rate is then within 1%


def positive(n: int = N, dtype: torch.dtype = torch.float32, device: str | None = DEVICE) -> torch.Tensor:
    """An input with no zeros, so that a zero in the output can only come from the mask."""
    return (torch.rand(n) + 0.5).to(device=device, dtype=dtype)


def saved_bytes_per_element(fn, x: torch.Tensor) -> float:
    """Bytes that autograd keeps for backward of ``fn(x)`` per element of x, x itself excluded."""
    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(x)
    return sum(t.numel() * t.element_size() for t in saved if t.data_ptr() != x.data_ptr()) / x.numel()


def tolerance(p: float, n: int = N) -> float:
    """Five standard deviations of a keep rate measured on n elements."""
    return 5 * math.sqrt(p * (1 - p) / n)


# The kernel against the reference, on the GPU or under the interpreter.


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_fast_path_drops_with_probability_p_like_the_reference(p):
    torch.manual_seed(0)
    x = positive()
    fast = (fast_dropout(x, p) == 0).float().mean().item()
    reference = (dropout(x, p, x.shape) == 0).float().mean().item()
    assert fast == pytest.approx(p, abs=tolerance(p))
    assert fast == pytest.approx(reference, abs=math.sqrt(2) * tolerance(p))


@needs_kernel
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_fast_path_scales_survivors_by_one_over_keep(p):
    x = positive()
    y = fast_dropout(x, p)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))


@needs_kernel
def test_fast_path_gradient_is_the_forwards_own_mask_over_keep():
    p = 0.4
    x = positive().requires_grad_()
    g = torch.randn(N, device=DEVICE)
    y = fast_dropout(x, p)
    (grad,) = torch.autograd.grad(y, x, g)
    kept = (y != 0).float()  # the forward's mask, read back from its output
    torch.testing.assert_close(grad, g * kept / (1 - p))


@needs_kernel
def test_fast_path_keeps_nothing_per_element_for_backward():
    x = positive().requires_grad_()
    assert saved_bytes_per_element(lambda t: fast_dropout(t, 0.5), x) == 0


@needs_kernel
def test_fast_path_masks_are_reproducible_under_manual_seed_and_new_on_every_call():
    x = positive()
    torch.manual_seed(123)
    first, second = fast_dropout(x, 0.5) == 0, fast_dropout(x, 0.5) == 0
    torch.manual_seed(123)
    assert torch.equal(fast_dropout(x, 0.5) == 0, first)
    assert not torch.equal(first, second)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fast_path_keeps_dtype_keep_rate_and_scaling(dtype):
    torch.manual_seed(0)
    x = positive(dtype=dtype)
    y = fast_dropout(x, 0.3)
    assert y.dtype == dtype and y.device == x.device
    assert (y == 0).float().mean().item() == pytest.approx(0.3, abs=tolerance(0.3))
    kept = y != 0
    # Both paths round x / (1 - p) to the dtype once.
    torch.testing.assert_close(y[kept], (x[kept].float() / 0.7).to(dtype))


@needs_kernel
def test_fast_path_with_p_zero_is_the_identity():
    x = positive()
    assert torch.equal(fast_dropout(x, 0.0), x)


@needs_kernel
def test_fast_path_refuses_p_one_which_the_plain_path_takes():
    with pytest.raises(ValueError, match="0 <= p < 1"):
        fast_dropout(positive(1000), 1.0)


@needs_kernel
def test_fast_path_takes_non_contiguous_input():
    x = positive(2 * N).view(2, N).t()  # a transposed view
    y = fast_dropout(x, 0.5)
    kept = y != 0
    assert y.shape == x.shape
    torch.testing.assert_close(y[kept], x[kept] * 2)


# Which path CustomDropout takes, in this process.


def test_cpu_tensors_take_the_plain_path():
    # The plain path's own test (test_dropout.py) checks it keeps at most one byte per element.
    assert not use_fast_path(torch.ones(2**22), 0.5)


def test_import_needs_neither_triton_nor_cuda():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, dropout_lab\n"
        "from dropout_lab.dropout import triton_dropout\n"
        "assert triton_dropout() is None and 'dropout_lab.dropout_triton' not in sys.modules\n"
        "assert dropout_lab.CustomDropout(0.5)(torch.ones(10)).shape == (10,)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.skipif(INTERPRETED, reason="this is the child process")
def test_kernel_tests_pass_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        __file__,
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-n",
        "0",
        "-k",
        "fast_path",
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert " skipped" not in result.stdout, result.stdout[-3000:]  # every kernel test ran


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_custom_dropout_on_cuda_picks_its_path_by_size(dtype):
    layer = CustomDropout(0.5)
    large, small = positive(2**21, dtype, "cuda").requires_grad_(), positive(1000, dtype, "cuda").requires_grad_()
    assert saved_bytes_per_element(layer, large) == 0
    assert saved_bytes_per_element(layer, small) == 1
    y = layer(large)
    (grad,) = torch.autograd.grad(y, large, torch.ones_like(y))
    assert y.dtype == dtype and (y == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(grad != 0, y != 0)
    assert torch.equal(layer.eval()(large), large)
    assert not use_fast_path(large, 1.0) and torch.equal(CustomDropout(1.0)(large), torch.zeros_like(large))
