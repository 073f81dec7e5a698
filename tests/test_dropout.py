"""CustomDropout and CustomDropout2d: the definition of inverted dropout, checked by statistics."""

import math

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from dropout_lab import CustomDropout, CustomDropout2d

N = 200_000  # large enough that the keep rate is within 0.5% with overwhelming probability


def positive(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An input with no zeros, so that a zero in the output can only come from the mask."""
    return (torch.rand(*shape) + 0.5).to(dtype)


def saved_bytes_per_element(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """Bytes that autograd keeps for backward per element of x, inputs themselves excluded."""
    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    kept = [t for t in saved if t.data_ptr() != x.data_ptr()]
    return sum(t.numel() * t.element_size() for t in kept) / x.numel()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_dropped_with_probability_p(p):
    torch.manual_seed(0)
    y = CustomDropout(p)(positive(N))
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / N))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_survivors_are_scaled_by_one_over_keep(p):
    x = positive(N)
    y = CustomDropout(p)(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))


def test_expected_value_is_unchanged():
    torch.manual_seed(0)
    x = torch.full((N,), 3.0)
    assert CustomDropout(0.5)(x).mean().item() == pytest.approx(3.0, rel=0.02)


def test_a_new_mask_is_drawn_on_every_call():
    layer, x = CustomDropout(0.5), positive(1000)
    assert not torch.equal(layer(x) == 0, layer(x) == 0)


def test_dropout_is_identity_in_eval_mode():
    layer, x = CustomDropout(0.5).eval(), positive(1000)
    assert torch.equal(layer(x), x)
    layer2d = CustomDropout2d(0.5).eval()
    x2d = positive(4, 8, 5, 5)
    assert torch.equal(layer2d(x2d), x2d)


def test_p_zero_is_identity_in_training():
    x = positive(1000)
    assert torch.equal(CustomDropout(0.0)(x), x)


def test_p_one_returns_zeros_without_nan():
    x = positive(1000).requires_grad_()
    y = CustomDropout(1.0)(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(x))
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_invalid_p_is_refused_with_the_value_and_the_range(p):
    with pytest.raises(ValueError, match=r"0 <= p <= 1") as error:
        CustomDropout(p)
    assert repr(p) in str(error.value)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5, 6), (0, 4)])
def test_any_shape_is_accepted(shape):
    x = torch.randn(shape)
    assert CustomDropout(0.5)(x).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_output_keeps_dtype_and_keep_rate(dtype):
    torch.manual_seed(0)
    y = CustomDropout(0.3)(positive(N, dtype=dtype))
    assert y.dtype == dtype
    assert (y == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_gradient_flows_through_kept_elements_scaled():
    p = 0.4
    x = positive(N).requires_grad_()
    g = torch.randn(N)
    y = CustomDropout(p)(x)
    (grad,) = torch.autograd.grad(y, x, g)
    kept = (y != 0).float()
    torch.testing.assert_close(grad, g * kept / (1 - p))


@pytest.mark.parametrize("layer", [CustomDropout(0.5), CustomDropout2d(0.5)])
def test_backward_keeps_at_most_one_byte_per_element(layer):
    x = positive(16, 32, 8, 8).requires_grad_()
    assert saved_bytes_per_element(layer, x) <= 1.0


def test_dropout2d_zeroes_whole_channels():
    torch.manual_seed(0)
    p, x = 0.5, positive(64, 32, 6, 6)
    y = CustomDropout2d(p)(x)
    dropped = (y == 0).flatten(2)
    assert torch.equal(dropped.all(dim=2), dropped.any(dim=2))  # a channel is zero everywhere or nowhere
    assert dropped.all(dim=2).float().mean().item() == pytest.approx(p, abs=0.05)
    # Channels, not whole samples: every sample keeps some channels and loses others.
    per_sample = dropped.all(dim=2).float().mean(dim=1)
    assert ((per_sample > 0) & (per_sample < 1)).all()
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))


def test_dropout2d_refuses_other_than_4d_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        CustomDropout2d(0.5)(torch.ones(4, 8))


def test_print_shows_p():
    assert "CustomDropout(p=0.3)" in repr(torch.nn.Sequential(CustomDropout(0.3)))
    assert "CustomDropout2d(p=0.1)" in repr(CustomDropout2d(0.1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_output_stays_on_device_with_dtype(dtype):
    x = positive(N, dtype=dtype).cuda()
    y = CustomDropout(0.5)(x)
    assert y.device == x.device and y.dtype == dtype
    assert (y == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
