"""Stop training the moment the loss stops being a number, and say where.

A NaN or infinite loss makes every later weight NaN; training on would waste the run and,
at the next epoch end, overwrite ``last.ckpt`` with a broken model. Raising here, before any
further checkpoint is written, keeps the checkpoints already on disk as they were.
"""

import lightning as L
import torch


class NaNGuard(L.Callback):
    """Raise FloatingPointError after the first training step whose loss is NaN or infinite."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # One device-to-host sync per step; the progress bar and step logging pay it anyway.
        if loss is None or torch.isfinite(loss).all():
            return
        folder = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
        raise FloatingPointError(
            f"the training loss became {loss.item()} in epoch {trainer.current_epoch}, batch {batch_idx} "
            f"(global step {trainer.global_step - 1}). Training stopped; the checkpoints written "
            f"before it are kept{f' in {folder}' if folder else ''}. Lower --model.lr and start a new run, "
            "or check the data for NaN or infinite values."
        )
