"""Inverted dropout, written out by hand.

Training: every unit is zeroed independently with probability ``p`` and the survivors are
scaled by ``1 / (1 - p)``, so the expected value of each unit is unchanged. Evaluation:
the identity. The layer decides by ``self.training`` alone, which Lightning switches for
us around every validation, test and predict loop.

On CUDA, large tensors take a fused Triton kernel (dropout_triton.py) that computes the same
thing and keeps no mask for backward; the choice is made at the end of this file.
"""

import functools
import numbers

import torch
from torch import Tensor, nn


def check_p(p: float, name: str = "p") -> float:
    """Return ``p`` as a float, or raise a ValueError that says what was wrong and what is allowed."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(
            f"{name} is the probability of dropping a unit and must be a number with 0 <= {name} <= 1, "
            f"got {p!r}. Use 0 for no dropout, 0.5 for the usual hidden-layer rate."
        )
    return float(p)


def dropout(x: Tensor, p: float, mask_shape: torch.Size) -> Tensor:
    """Zero entries of ``x`` with probability ``p`` (one draw per entry of ``mask_shape``), scale the rest."""
    # The uniform draw is float32 whatever x's dtype: a bfloat16 draw has only 8 bits and
    # would bend the keep rate. The mask is boolean, so backward keeps one byte per mask
    # entry (autograd saves it for the multiplication), not a float copy of it.
    keep_mask = torch.rand(mask_shape, device=x.device) >= p
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0  # p = 1 drops everything: no 1/0, no NaN
    return x * keep_mask * scale


class CustomDropout(nn.Module):
    """Inverted dropout: each element is zeroed with probability ``p`` in training mode.

    Args:
        p: probability of dropping each element, 0 <= p <= 1.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = check_p(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if use_fast_path(x, self.p):  # large CUDA tensors: the same dropout, fused (see the end of this file)
            return fast_dropout(x, self.p)
        return dropout(x, self.p, x.shape)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class CustomDropout2d(CustomDropout):
    """Channel-wise inverted dropout for conv feature maps of shape (N, C, H, W).

    A neighbouring pixel carries almost the same information as the one dropped, so
    conv maps drop whole channels instead of single pixels.

    Args:
        p: probability of dropping each channel, 0 <= p <= 1.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"CustomDropout2d expects a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        if not self.training or self.p == 0.0:
            return x
        return dropout(x, self.p, x.shape[:2] + (1, 1))


# The fast path. Everything above is the definition; below, only the choice of a faster way to
# compute it on CUDA. CustomDropout2d stays on the plain path: its mask has one entry per
# channel, a few bytes per sample, so there is nothing to save by regenerating it.

FAST_PATH_MIN_NUMEL = 2**20  # below ~1M elements one kernel launch costs more than the memory it saves (issue 6, H100)
FAST_PATH_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def triton_dropout():
    """The Triton kernel's module, or None where Triton is not installed. Imported on first use only."""
    try:
        from dropout_lab import dropout_triton
    except ImportError:
        return None
    return dropout_triton


def use_fast_path(x: Tensor, p: float) -> bool:
    """Whether ``x`` is a large floating-point CUDA tensor that the fused Triton kernel can take."""
    return (
        x.is_cuda
        and x.dtype in FAST_PATH_DTYPES
        and FAST_PATH_MIN_NUMEL <= x.numel()
        and p < 1.0  # p = 1 is all zeros: nothing to draw
        # torch.compile fuses the plain path by itself; the kernel's seed would break its graph.
        and not torch.compiler.is_compiling()
        and triton_dropout() is not None
        and x.numel() <= triton_dropout().MAX_NUMEL
    )


def fast_dropout(x: Tensor, p: float) -> Tensor:
    """``dropout(x, p, x.shape)`` by the fused Triton kernel: no mask is kept for backward."""
    return triton_dropout().dropout(x, p)
