"""Training options that change how the network runs, not what it computes: torch.compile and bf16."""

import math
from pathlib import Path

import pytest
import torch
from conftest import QUICK, only_run_dir, read_events, run_train, scalars

from dropout_lab import CNNClassifier, CustomDropout, CustomDropout2d, MLPClassifier


def train_losses(root: Path) -> list[float]:
    return [value for _, value in scalars(read_events(only_run_dir(root)), "train/loss")]


@pytest.mark.slow
def test_compiled_model_trains_and_its_checkpoint_loads_without_compile(tmp_path):
    run_train("--model.compile=true", "--model.hidden=[64]", *QUICK, root=tmp_path)
    losses = train_losses(tmp_path)
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)

    # nn.Module.compile() compiles in place, so the checkpoint has the plain net's keys.
    checkpoint = only_run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    plain = MLPClassifier.load_from_checkpoint(checkpoint, compile=False, weights_only=True)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert set(state) == set(plain.state_dict()) and not any("_orig_mod" in key for key in state)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["CNNClassifier"])  # the MLP: in test_trainer_flags.py's flag matrix
def test_bf16_mixed_precision_trains_with_a_finite_loss(tmp_path, model):
    run_train(f"--model={model}", "--trainer.precision=bf16-mixed", *QUICK, root=tmp_path)
    losses = train_losses(tmp_path)
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)


def test_compile_flag_leaves_the_state_dict_keys_alone():
    assert MLPClassifier(compile=True).state_dict().keys() == MLPClassifier().state_dict().keys()
    assert CNNClassifier(compile=True).state_dict().keys() == CNNClassifier().state_dict().keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_under_bf16_autocast_returns_the_inputs_dtype(dtype):
    x = torch.rand(8, 4, 6, 6).to(dtype) + 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert CustomDropout(0.5)(x).dtype == dtype
        assert CustomDropout2d(0.5)(x).dtype == dtype
        # As inside a network: a linear layer under autocast hands dropout a bfloat16 tensor.
        hidden = torch.nn.Linear(6, 6)(x)
        assert hidden.dtype == torch.bfloat16 and CustomDropout(0.5)(hidden).dtype == torch.bfloat16
