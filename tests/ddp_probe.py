"""A callback for the DDP tests, loaded by train.py as ``--trainer.callbacks+=tests.ddp_probe.DropoutProbe``."""

from pathlib import Path

import lightning as L
import torch

from dropout_lab import CustomDropout


class DropoutProbe(L.Callback):
    """Save, per rank, the initial weights and the dropout mask of the first training step.

    Args:
        out_dir: folder for ``rank{N}.pt``.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.mask: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before DDP wraps the model and broadcasts rank 0's weights: these are each rank's own.
        self.weights = {key: value.clone() for key, value in pl_module.state_dict().items()}
        first_dropout = next(m for m in pl_module.modules() if isinstance(m, CustomDropout))
        first_dropout.register_forward_hook(self.capture)

    def capture(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if module.training and self.mask is None:
            self.mask = output == 0  # the inputs hold no exact zeros, so zeros are the mask

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": self.weights, "mask": self.mask}, self.out_dir / f"rank{trainer.global_rank}.pt")


class RatesProbe(L.Callback):
    """Save, per rank, the learned dropout rates at the end of training (``rates{N}.pt``).

    Args:
        out_dir: folder for ``rates{N}.pt``.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rates = {
            name: layer.p_logit.detach().clone()
            for name, layer in pl_module.net.named_modules()
            if hasattr(layer, "p_logit")
        }
        torch.save(rates, self.out_dir / f"rates{trainer.global_rank}.pt")
