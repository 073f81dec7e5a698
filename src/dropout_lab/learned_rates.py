"""Learned dropout rates on any net built with CustomDropout (``--model.learn_dropout``, docs/learned_dropout.md).

``learn_rates`` swaps every CustomDropout(2d) of a net for a ConcreteDropout(2d) that starts at its p, and finds
what each one's regularizer needs from the net itself, by one forward pass of a zero batch: K, the width of the
layer's input, and the Linear or Conv2d that its output feeds (the next one the pass reaches). So a net of your
own learns its rates with no code of its own. ``concrete_regularizer`` is the term the training loss adds.
"""

from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from dropout_lab.dropout import (
    ConcreteDropout,
    ConcreteDropout2d,
    CustomDropout,
    CustomDropout2d,
    check_start_p,
    dropout_layers,
    dropout_roles,
    regularizer_weights,
)

# The learned rates' own AdamW learning rate. Adam moves a parameter by about its learning rate per step
# whatever the gradient, so at the weights' 1e-3 a rate's logit moves at most about 0.5 in the default run's
# 945 steps, and rates started at 0.1 and 0.7 stay near their starts; at DROPOUT_LR they meet
# (docs/learned_dropout.md, measured).
DROPOUT_LR = 0.03

Pairs = list[tuple[ConcreteDropout, nn.Module]]  # each learned layer, with the layer that takes its output


def learn_rates(net: nn.Module, input_shape: Sequence[int], temperature: float) -> Pairs:
    """Swap each CustomDropout(2d) in ``net`` for a ConcreteDropout(2d) at its p; each with the layer it feeds.

    Module names stay, so do the state_dict's keys. A net swapped already keeps its layers (a second fit, a
    checkpoint loaded into a trained model), so this can run again.
    """
    calls: list[tuple[str, nn.Module, Tensor]] = []  # (name, module, its input) in the order the pass calls them
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: calls.append((name, m, args[0])))
        for name, module in net.named_modules()
        if isinstance(module, (CustomDropout, ConcreteDropout, nn.Linear, nn.Conv2d))
    ]
    modes = {module: module.training for module in net.modules()}
    roles = dropout_roles(net)
    try:  # eval mode: no mask is drawn (the random stream, hence exact resume, stays as it was), BatchNorm is kept
        for module in modes:
            module.training = False  # as Lightning's loops set modes, and restored below
        with torch.no_grad():
            net(torch.zeros(2, *input_shape, device=next(net.parameters()).device))
    except RuntimeError as error:  # a shape mismatch: the net was built for other inputs
        raise ValueError(
            f"learn_dropout finds each dropout layer's width and next layer by passing a zero batch of shape "
            f"{tuple(input_shape)} through the net, which failed ({str(error).splitlines()[0]}). Pass the net's "
            "input_shape on to Classifier.__init__ (super().__init__(num_classes, input_shape, **kwargs))."
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    pairs, waiting = [], None
    for name, module, x in calls:
        if isinstance(module, (CustomDropout, ConcreteDropout)):
            waiting = concrete_layer(net, name, roles[name], module, x, temperature)
        elif waiting is not None:  # a Linear or Conv2d: the layer that takes the dropout's output
            pairs.append((waiting, module))
            waiting = None
    return pairs


def concrete_layer(net: nn.Module, name: str, role: str, layer: nn.Module, x: Tensor, t: float) -> ConcreteDropout:
    """``layer`` if it learns its rate already, else a ConcreteDropout(2d) put in its place in ``net``."""
    if isinstance(layer, ConcreteDropout):
        return layer
    check_start_p(layer.p, f"the {role} dropout layer's p")
    channels = isinstance(layer, CustomDropout2d)
    width = x.shape[1] if channels else x.shape[-1]
    concrete = (ConcreteDropout2d if channels else ConcreteDropout)(width, layer.p, t).to(x.device)
    concrete.training = layer.training
    parent, _, attribute = name.rpartition(".")
    setattr(net.get_submodule(parent), attribute, concrete)
    return concrete


def concrete_regularizer(pairs: Pairs, weights: tuple[float, float]) -> Tensor:
    """The sum of every learned layer's regularizer (ConcreteDropout.regularizer), weighed by (wr, dr)."""
    return sum(layer.regularizer(next_layer, *weights) for layer, next_layer in pairs)


def learned_rates(module: nn.Module) -> dict[str, float]:
    """The drop probability of each ConcreteDropout layer of ``module`` by its role (dropout_roles); {} if none."""
    roles, layers = dropout_roles(module), dropout_layers(module).items()
    return {roles[name]: layer.p.item() for name, layer in layers if isinstance(layer, ConcreteDropout)}


def regularizer_weights_for(trainer, weight_regularizer: float | None, dropout_regularizer: float | None):
    """(wr, dr) for a fit: the arguments, or what the training set's size gives where they are None."""
    if weight_regularizer is not None and dropout_regularizer is not None:
        return weight_regularizer, dropout_regularizer
    try:  # the whole training set (under DDP too: each rank's sampler takes its share of the same dataset)
        n = len(trainer.train_dataloader.dataset)
    except (AttributeError, TypeError):
        raise ValueError(
            "learn_dropout weighs its regularizer by the number of training examples, which this training data "
            "does not tell (no len()): give --model.weight_regularizer and --model.dropout_regularizer."
        ) from None
    wr, dr = regularizer_weights(n)
    wr = wr if weight_regularizer is None else weight_regularizer
    dr = dr if dropout_regularizer is None else dropout_regularizer
    rank_zero_info(
        f"Concrete dropout's regularizer for N={n} training images: weight_regularizer={wr:.3g}, "
        f"dropout_regularizer={dr:.3g}."
    )
    return wr, dr


def parameter_groups(module: nn.Module, dropout_lr: float) -> list:
    """AdamW's groups: the weights, and the learned rates with their own learning rate and no weight decay."""
    # A learned rate is no weight: decay would pull every p_logit to 0 (p to 0.5) whatever the data says.
    rates = [param for name, param in module.named_parameters() if name.endswith("p_logit")]
    weights = [param for name, param in module.named_parameters() if not name.endswith("p_logit")]
    return [{"params": weights}, {"params": rates, "weight_decay": 0.0, "lr": dropout_lr}] if rates else weights


def check_regularizer(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"{name} weighs a term of the loss and must be >= 0, got {value!r} (0 turns the term off; leave it "
            "out to derive it from the number of training images)."
        )
    return float(value)


def check_dropout_lr(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"dropout_lr is the learned rates' learning rate and must be > 0, got {value!r}: use "
            f"--model.dropout_lr={DROPOUT_LR} (the default), or --model.learn_dropout=false to keep the rates fixed."
        )
    return float(value)
