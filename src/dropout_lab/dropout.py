"""Inverted dropout, written out by hand.

Training: every unit is zeroed independently with probability ``p`` and the survivors are
scaled by ``1 / (1 - p)``, so the expected value of each unit is unchanged. Evaluation:
the identity. The layer decides by ``self.training`` alone, which Lightning switches for
us around every validation, test and predict loop.

ConcreteDropout (Gal, Hron and Kendall, 2017) learns its rate: p = sigmoid(p_logit) is a trained
parameter, the mask a relaxed ("concrete") Bernoulli draw through which the loss has a gradient in p,
and the training loss takes the layer's ``regularizer``. In evaluation it is the identity too.

On CUDA, large tensors take a fused Triton kernel (dropout_triton.py) that computes the same
thing and keeps no mask for backward; the choice is made at the end of this file.
"""

import functools
import math
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


EPS = 1e-7  # ε inside the logs of the concrete mask: u and p never reach exactly 0 or 1 there


def concrete_dropout(x: Tensor, p: Tensor, mask_shape: torch.Size, temperature: float) -> Tensor:
    """``x · (1 − z) / (1 − p)``, z a relaxed Bernoulli(p) drop mask (one draw per entry of ``mask_shape``)."""
    u = torch.rand(mask_shape, device=x.device)  # float32, as in dropout() above
    z = torch.sigmoid(
        (torch.log(p + EPS) - torch.log(1 - p + EPS) + torch.log(u + EPS) - torch.log(1 - u + EPS)) / temperature
    )
    # The factor in x's dtype: a bfloat16 x times a float32 factor would come out float32.
    return x * ((1 - z) / (1 - p)).to(x.dtype)


class ConcreteDropout(nn.Module):
    """Concrete dropout: inverted dropout whose drop probability p is learned.

    p = sigmoid(p_logit), one trained parameter per layer. Training: a relaxed drop mask
    z = sigmoid((log p − log(1−p) + log u − log(1−u)) / t), u ~ U(0,1), and the output x·(1−z)/(1−p).
    As t → 0, z becomes a Bernoulli(p) draw of 0s and 1s (at t = 0.1 the mean of the output is x within
    about 1 % for p <= 0.8). Evaluation: the identity. Without ``regularizer`` in the loss, p goes to 0.

    Args:
        num_features: K, the number of input features (the input's last dimension), for the regularizer.
        p: drop probability to start from, 0 < p < 1 (its logit is learned, infinite at 0 and 1).
        temperature: t of the relaxation, > 0 (the paper's 0.1).
    """

    def __init__(self, num_features: int, p: float = 0.5, temperature: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.temperature = check_temperature(temperature)
        p = check_start_p(p)
        self.p_logit = nn.Parameter(torch.tensor(math.log(p) - math.log(1 - p)))

    @property
    def p(self) -> Tensor:
        return torch.sigmoid(self.p_logit)

    def forward(self, x: Tensor) -> Tensor:
        self.check_features(x)
        if not self.training:
            return x
        return concrete_dropout(x, self.p, x.shape, self.temperature)

    def check_features(self, x: Tensor) -> None:
        if x.shape[-1] != self.num_features:  # else the regularizer would be weighted by the wrong K
            raise ValueError(f"{type(self).__name__}({self.num_features}) got an input of shape {tuple(x.shape)}")

    def regularizer(self, next_layer: nn.Module, weight_regularizer: float, dropout_regularizer: float) -> Tensor:
        """wr · Σθ² / (1 − p) + dr · K · (p log p + (1 − p) log(1 − p)), θ the parameters of ``next_layer``.

        ``next_layer`` is the layer that takes this layer's output. The first term is the weights' prior
        under dropout; the second, the negative entropy of the drop decision, pulls p towards 0.5.
        """
        p = self.p
        # θ·θ, not θ.pow(2): its backward was measured 2.4 times faster on the CPU (1M weights).
        sum_of_squares = sum((theta * theta).sum() for theta in next_layer.parameters())
        negative_entropy = p * torch.log(p) + (1 - p) * torch.log(1 - p)
        return (
            weight_regularizer * sum_of_squares / (1 - p) + dropout_regularizer * self.num_features * negative_entropy
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, p={self.p.item():.4g}, temperature={self.temperature}"


# The prior length-scale l of the weights (prior N(0, 1/l²) per weight) that regularizer_weights assumes.
PRIOR_LENGTH_SCALE = 0.1


def regularizer_weights(n: int, length_scale: float = PRIOR_LENGTH_SCALE) -> tuple[float, float]:
    """(wr, dr) of ConcreteDropout.regularizer for a mean cross-entropy loss over ``n`` training examples.

    Concrete dropout (Gal, Hron & Kendall 2017) minimizes, per example, −(1/M) Σ log p(y|x) + KL/N, where
    the mean over a batch of M is what F.cross_entropy returns. For a layer of K inputs dropped with p and
    the weights W of the layer after it, the KL to a prior N(0, 1/l²) is, up to a constant,
    l²/2 · Σ W² / (1 − p) − K · H(p) (Σ W²/(1 − p), not (1 − p) Σ M²: inverted dropout scales by 1/(1 − p)).
    Divided by N: wr = l² / (2N), dr = 1/N. With l = 0.1 and the 4,000 embedded training digits that is
    wr = 1.25e-6 and dr = 2.5e-4. The reference code's constants are wr = l²/N and dr = 2/N: a Gaussian
    likelihood (regression), whose loss carries a factor 1/2 that cross-entropy does not; its layer's defaults
    are wr = 1e-6 and dr = 1e-5.
    """
    if n < 1:
        raise ValueError(f"the regularizer's weights need the number of training examples, got {n}")
    return length_scale**2 / (2 * n), 1 / n


class ConcreteDropout2d(ConcreteDropout):
    """Channel-wise concrete dropout for conv feature maps (N, C, H, W): one relaxed mask entry per channel.

    Args:
        num_features: K, the number of channels C, for the regularizer.
        p: drop probability of each channel to start from, 0 < p < 1.
        temperature: t of the relaxation, > 0 (the paper's 0.1).
    """

    def forward(self, x: Tensor) -> Tensor:
        self.check_features(x)
        if not self.training:
            return x
        return concrete_dropout(x, self.p, x.shape[:2] + (1, 1), self.temperature)

    def check_features(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"ConcreteDropout2d({self.num_features}) expects (N, {self.num_features}, H, W), got {tuple(x.shape)}"
            )


def check_start_p(p: float, name: str = "p") -> float:
    """``p`` as a float if a learned rate can start there (0 < p < 1), else a ValueError that says why."""
    p = check_p(p, name)
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"{name}={p} cannot start a learned rate: ConcreteDropout learns log(p / (1 - p)), which is infinite at "
            f"p = 0 or 1. Start it strictly between 0 and 1 (e.g. {name}=0.1), or keep the rates fixed."
        )
    return p


def check_temperature(temperature: float, name: str = "temperature") -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(
            f"{name} is the concrete relaxation's temperature and must be > 0, got {temperature!r}. "
            "Use 0.1 (the paper's): the smaller, the closer the mask is to 0s and 1s."
        )
    return float(temperature)


def dropout_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The CustomDropout(2d) and ConcreteDropout(2d) layers in ``module``, by module name."""
    # The 2d layers are subclasses of the others.
    return {name: m for name, m in module.named_modules() if isinstance(m, (CustomDropout, ConcreteDropout))}


def dropout_roles(module: nn.Module) -> dict[str, str]:
    """Each dropout layer's module name in ``module`` -> its role, the name TensorBoard's tags give it.

    input, hidden1, hidden2, ... for an MLP; conv1, conv2, ..., head for a CNN (head2, ... if it has more).
    Read from the order of ``module.modules()``: a layer before any Linear or Conv2d drops the input; a channel
    dropout follows a conv block; the others follow a hidden layer, or, in a network with conv blocks, belong
    to the head.
    """
    roles, weights, convs, ones = {}, False, 0, 0
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            weights = True
        elif isinstance(layer, (CustomDropout2d, ConcreteDropout2d)):  # subclasses of the 1d ones: first
            convs += 1
            roles[name] = f"conv{convs}"
        elif isinstance(layer, (CustomDropout, ConcreteDropout)):
            if not weights:
                roles[name] = "input"
                continue
            ones += 1
            roles[name] = (f"head{ones}" if ones > 1 else "head") if convs else f"hidden{ones}"
    return roles


def dropout_rates(module: nn.Module) -> dict[str, float]:
    """The drop probability of every dropout layer in ``module`` now (set, scheduled or learned), by its role
    (dropout_roles): the ``<layer>`` of TensorBoard's ``dropout/p/<layer>``."""
    roles = dropout_roles(module)
    layers = dropout_layers(module).items()
    return {roles[name]: layer.p.item() if isinstance(layer, ConcreteDropout) else layer.p for name, layer in layers}


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
