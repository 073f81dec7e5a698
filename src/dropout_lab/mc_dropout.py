"""Monte Carlo dropout: the mean of several passes with the dropout layers on, and nothing else in training mode.

The test and predict loops put every module in eval mode, and a step cannot switch modes back (Lightning
#21410): that would silently turn MC dropout into ``mc_samples`` equal passes. So Classifier's
``on_test_model_eval`` and ``on_predict_model_eval`` call ``dropout_layers_on`` after Lightning's own hook, and
the loops write every module's mode back afterwards. ``predict_proba`` does the same outside a Trainer.
"""

import torch
from torch import Tensor, nn

from dropout_lab.dropout import dropout_layers


def dropout_layers_on(model: nn.Module) -> None:
    """Put the dropout layers of ``model`` (CustomDropout, ConcreteDropout, their 2d versions) in training mode."""
    for module in dropout_layers(model).values():
        module.train()


def sample_probs(model: nn.Module, x: Tensor, passes: int) -> Tensor:
    """The softmax of ``passes`` forward passes, shape (passes, batch, classes)."""
    # One pass per iteration. One forward of the batch repeated mc_samples times was measured
    # (benchmarks/mc_dropout.py, CPU): 1.6 to 1.8 times slower for the CNN, 5 to 15 % faster for the MLP.
    return torch.stack([model(x).softmax(dim=-1) for _ in range(passes)])


@torch.inference_mode()
def predict_proba(model, images: Tensor, mc_samples: int | None = None) -> Tensor:
    """Class probabilities (N, classes) of uint8 images (N, C, H, W) or (N, H, W), on the model's device.

    ``model.predict_proba(images)`` of a Classifier. The images are normalized as in training (the statistics
    come from the checkpoint) and the network is in eval mode; with ``mc_samples`` > 1 (default: the model's),
    the mean of that many passes with the dropout layers on. Every module's mode is restored afterwards.
    """
    if model.normalization is None:
        raise ValueError(
            "predict_proba needs the normalization of the training data, which this model does not have: "
            "load it from a checkpoint written by train.py, or set model.normalization = {'mean': [...], "
            "'std': [...]}."
        )
    if images.dtype != torch.uint8:
        raise ValueError(f"predict_proba takes uint8 images (0-255), got {images.dtype}")
    passes = check_mc_samples(model.mc_samples if mc_samples is None else mc_samples)
    images = images.unsqueeze(1) if images.dim() == 3 else images
    mean = torch.tensor(model.normalization["mean"], device=model.device).view(-1, 1, 1)
    std = torch.tensor(model.normalization["std"], device=model.device).view(-1, 1, 1)
    x = (images.to(model.device).float() / 255 - mean) / std
    modes = {module: module.training for module in model.modules()}
    try:
        # What the predict loop does, outside a Trainer: eval mode, then the MC dropout hook's choice.
        model.eval()
        if passes > 1:
            dropout_layers_on(model)
        return sample_probs(model, x, passes).mean(dim=0)
    finally:
        for module, training in modes.items():
            module.training = training  # as Lightning's loops restore modes: no train() call


def check_mc_samples(mc_samples: int) -> int:
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(
            f"mc_samples is the number of forward passes per image and must be an integer >= 1, got {mc_samples!r}. "
            "Use 1 for the deterministic eval-mode pass, 10 to 30 for Monte Carlo dropout."
        )
    return mc_samples
