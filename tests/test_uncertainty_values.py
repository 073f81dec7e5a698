"""The numbers of the test loop, checked against values recomputed here from the model's own outputs.

The test loop's metrics (test/* deterministic, test_mc/* with Monte Carlo dropout) are what a user
reads after training; these tests pin their values, not only that the tags exist.
"""

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dropout_lab import MLPClassifier, MNIST5kDataModule
from dropout_lab.uncertainty import calibration_metrics, mutual_information, update_calibration


def reference_ece(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error, the textbook way: equal-width bins of the top probability."""
    confidence, prediction = probs.max(dim=-1)
    right = (prediction == target).float()
    total = 0.0
    for b in range(bins):
        inside = (confidence > b / bins) & (confidence <= (b + 1) / bins)
        if inside.any():
            total += inside.float().mean() * (right[inside].mean() - confidence[inside].mean()).abs()
    return float(total)


def reference_selective(confidence: torch.Tensor, wrong: torch.Tensor, suffix: str = "") -> dict[str, float]:
    """AURC and the risk at 80 % coverage of a ranking without ties, written out in numpy."""
    order = np.argsort(-confidence.numpy())
    risks = np.cumsum(wrong.numpy()[order]) / np.arange(1, len(order) + 1)
    return {f"aurc{suffix}": risks.mean(), f"risk_at_80_coverage{suffix}": risks[math.ceil(0.8 * len(order)) - 1]}


def reference_metrics(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL, 15-bin ECE, Brier score, AURC and risk at 80 % coverage of probabilities, written out here."""
    one_hot = F.one_hot(target, probs.shape[-1]).float()
    return {
        "acc": (probs.argmax(dim=-1) == target).float().mean().item(),
        "nll": -probs[torch.arange(len(target)), target].log().mean().item(),
        "ece": reference_ece(probs, target),
        "brier": (probs - one_hot).square().sum(dim=-1).mean().item(),
        **reference_selective(probs.max(dim=-1).values, probs.argmax(dim=-1) != target),
    }


def computed(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    metrics = calibration_metrics(probs.shape[-1], "")
    update_calibration(metrics, probs, target)
    return {name: value.item() for name, value in metrics.compute().items()}


def test_mutual_information_is_exactly_zero_or_more_when_all_passes_agree():
    # Three equal passes: entropy of the mean minus mean entropy is 0, but float32 rounding alone
    # makes it about -4e-7 for some of these distributions (seen: 134 of 1000).
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1000, 10) * 3, dim=-1)
    information = mutual_information(probs.expand(3, -1, -1))
    assert (information >= 0).all()
    assert information.max() < 1e-6


def test_ece_uses_15_bins_where_10_would_give_another_value():
    # Confidences 0.61 (right) and 0.69 (wrong): two bins of 15 ([0.6, 0.667) and [0.667, 0.733)),
    # one bin of 10 ([0.6, 0.7)), where they would average out to |0.5 - 0.65| = 0.15.
    probs = torch.tensor([[0.61, 0.39], [0.69, 0.31]])
    target = torch.tensor([0, 1])
    assert computed(probs, target)["ece"] == pytest.approx((0.39 + 0.69) / 2)
    assert reference_ece(probs, target, bins=10) == pytest.approx(0.15)  # what 10 bins would say


def test_ece_matches_the_textbook_definition_on_random_predictions():
    torch.manual_seed(1)
    probs = torch.softmax(torch.randn(500, 10) * 2, dim=-1)
    target = torch.randint(0, 10, (500,))
    assert computed(probs, target)["ece"] == pytest.approx(reference_ece(probs, target), abs=1e-5)


def test_nll_is_finite_when_the_true_class_has_probability_zero():
    # float32 softmax underflows to exactly 0 for a logit 104 below the top one.
    probs = torch.softmax(torch.tensor([[0.0, -200.0], [0.0, 0.0]]), dim=-1)
    assert probs[0, 1] == 0
    nll = computed(probs, torch.tensor([1, 0]))["nll"]
    assert math.isfinite(nll) and nll > 10  # very wrong, but a number a mean over a test set can carry


class RecordBatches(L.Callback):
    """Each test batch, with the torch generator's state just before the step draws its dropout masks."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches.append((batch[0].clone(), batch[1].clone(), torch.get_rng_state()))


def run_test_loop(model: MLPClassifier, data: MNIST5kDataModule) -> tuple[dict[str, float], RecordBatches]:
    recorder = RecordBatches()
    trainer = L.Trainer(
        limit_test_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    L.seed_everything(3, verbose=False)
    (results,) = trainer.test(model, data, verbose=False)
    return results, recorder


@pytest.fixture(scope="module")
def data() -> MNIST5kDataModule:
    return MNIST5kDataModule(batch_size=16)


def test_deterministic_test_metrics_equal_a_recomputation_from_the_eval_mode_outputs(data):
    torch.manual_seed(0)
    model = MLPClassifier(hidden=(32,), mc_samples=1)
    results, recorder = run_test_loop(model, data)
    x = torch.cat([batch[0] for batch in recorder.batches])
    y = torch.cat([batch[1] for batch in recorder.batches])
    assert len(y) == 32
    model.eval()  # the reference: the test loop's own mode
    with torch.no_grad():
        logits = model(x)
    expected = {f"test/{name}": value for name, value in reference_metrics(logits.softmax(dim=-1), y).items()}
    expected["test/loss"] = F.cross_entropy(logits, y).item()
    assert results == pytest.approx(expected, rel=1e-5, abs=1e-6)  # test/* only: no test_mc/* key


def test_mc_test_metrics_equal_a_recomputation_from_the_mean_of_the_passes(data):
    torch.manual_seed(0)
    model = MLPClassifier(hidden=(32,), mc_samples=4)
    results, recorder = run_test_loop(model, data)
    model.train()  # the MLP has no BatchNorm: train mode is "dropout layers on", as in the MC test loop
    passes = []
    with torch.no_grad():
        for x, _, state in recorder.batches:
            torch.set_rng_state(state)  # the masks the test step drew
            passes.append(torch.stack([model(x).softmax(dim=-1) for _ in range(4)]))
    passes, y = torch.cat(passes, dim=1), torch.cat([batch[1] for batch in recorder.batches])
    probs = passes.mean(dim=0)
    # Mutual information: the entropy of the mean minus the mean entropy of the passes.
    information = -(probs * probs.log()).sum(-1) + (passes * passes.log()).sum(-1).mean(0)
    expected = reference_metrics(probs, y) | reference_selective(
        -information, probs.argmax(-1) != y, "_mutual_information"
    )
    expected = {f"test_mc/{name}": value for name, value in expected.items()}
    assert results == pytest.approx(expected, rel=1e-5, abs=1e-6)  # test_mc/* only: no test/* key
