"""CustomDropout's fast path on CUDA: one fused Triton kernel, and no mask kept for backward.

The keep mask comes from Philox, a counter-based generator: the random bits of element ``i``
are a pure function of ``(seed, i)``. Forward draws a seed, zeroes and scales ``x`` in one
pass; backward runs the same kernel on the incoming gradient with the same seed, which
draws the same mask again. Autograd keeps the seed and ``p`` (0 bytes per element instead
of the 1-byte mask of the plain path), and each pass reads one tensor and writes one.

The definition of the layer is ``dropout.dropout``; this file computes the same thing faster.
Importing it needs Triton; ``dropout.py`` imports it only when a CUDA tensor asks for it.
"""

import torch
import triton
import triton.language as tl

BLOCK = 1024  # Philox counters per program; each counter gives 4 numbers, so a program covers 4 * BLOCK elements
MAX_NUMEL = 2**31 - 4 * BLOCK  # element offsets are int32, including the last program's padding


@triton.jit
def _zero_or_scale(x_ptr, out_ptr, offsets, n, bits, p, scale):
    in_bounds = offsets < n
    x = tl.load(x_ptr + offsets, mask=in_bounds)
    # The same test as the reference: keep where a float32 uniform draw is >= p.
    keep = tl.uint_to_uniform_float(bits) >= p
    out = tl.where(keep, x.to(tl.float32) * scale, 0.0)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=in_bounds)


# A new seed on every call must not compile a new kernel variant.
@triton.jit(do_not_specialize=["seed"])
def _dropout_kernel(x_ptr, out_ptr, n, p, scale, seed, BLOCK: tl.constexpr):
    # One Philox call yields four 32-bit numbers (randint4x, the cheapest way to draw them):
    # counter c decides one element in each of the program's four contiguous quarters, so
    # every load and store stays contiguous.
    counters = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bits0, bits1, bits2, bits3 = tl.randint4x(seed, counters)
    start = tl.program_id(0) * 4 * BLOCK + tl.arange(0, BLOCK)
    _zero_or_scale(x_ptr, out_ptr, start, n, bits0, p, scale)
    _zero_or_scale(x_ptr, out_ptr, start + BLOCK, n, bits1, p, scale)
    _zero_or_scale(x_ptr, out_ptr, start + 2 * BLOCK, n, bits2, p, scale)
    _zero_or_scale(x_ptr, out_ptr, start + 3 * BLOCK, n, bits3, p, scale)


def apply_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``x`` with the mask of ``seed`` applied: dropped entries zero, kept ones scaled by 1 / (1 - p)."""
    if not 0.0 <= p < 1.0 or x.numel() > MAX_NUMEL:
        raise ValueError(f"the Triton path needs 0 <= p < 1 and at most {MAX_NUMEL} elements, got p={p}, {x.numel()}")
    # Forward and backward must number the elements alike: both in row-major order.
    x = x.contiguous()
    out = torch.empty_like(x)
    grid = (triton.cdiv(x.numel(), 4 * BLOCK),)
    _dropout_kernel[grid](x, out, x.numel(), p, 1.0 / (1.0 - p), seed, BLOCK=BLOCK)
    return out


class TritonDropout(torch.autograd.Function):
    """Dropout whose backward regenerates the forward's mask from the seed it saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        # The seed comes from torch's default (CPU) generator, so torch.manual_seed and
        # seed_everything make the masks reproducible, and reading it waits for no GPU work.
        seed = int(torch.randint(2**31, ()))
        ctx.p, ctx.seed = p, seed
        return apply_mask(x, p, seed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # d(x * mask * scale)/dx = mask * scale: the same operation applied to the gradient.
        return apply_mask(grad, ctx.p, ctx.seed), None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of every element of ``x`` with probability ``p`` (0 <= p < 1), by the Triton kernel."""
    return TritonDropout.apply(x, p)
