"""The learning rate's cosine over the whole run, as a function of the step and of this run's length.

A function, not a state: a resume with a larger max_epochs follows the cosine of the longer run from the
step it resumes at. (A CosineAnnealingLR keeps its T_max in the checkpoint, so it would restart a cycle past
the old end.) ``replan`` puts the new plan's rate into the optimizer after such a resume.
"""

import math

import torch
from lightning.pytorch.utilities import rank_zero_info


def cosine(step: int, steps: float) -> float:
    """The learning rate's factor at ``step`` of ``steps``: from 1 down to 0 along half a cosine, then 0."""
    return 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))


def cosine_scheduler(optimizer: torch.optim.Optimizer, steps: float) -> dict:
    """Lightning's scheduler config: the cosine over ``steps``, stepped every optimizer step."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, steps))
    return {"scheduler": scheduler, "interval": "step"}


def replan(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: float, checkpoint_steps: float | None) -> None:
    """After a resume whose checkpoint planned ``checkpoint_steps``: the rate of this run's plan of ``steps``."""
    if checkpoint_steps in (None, steps):
        return
    # The optimizer's state holds the rate of the old plan for the next step: the new plan's instead.
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * cosine(scheduler.last_epoch, steps)
    rank_zero_info(
        f"The cosine learning-rate schedule was re-planned for {steps} steps, the length of "
        f"this run (the checkpoint's run planned {checkpoint_steps})."
    )
