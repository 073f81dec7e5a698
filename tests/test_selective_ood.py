"""What MC dropout is for, measured in test: abstaining when unsure (AURC, risk at 80 % coverage) and telling
out-of-distribution images apart (AUROC, AUPR, FPR95), each checked against a computation written out here."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_events
from torchvision.io import write_png

from dropout_lab import MNIST5kDataModule, ShiftedMNIST5kDataModule
from dropout_lab.cli import DropoutLabCLI
from dropout_lab.ood import detection_metrics, ood_test_loader
from dropout_lab.selective import aurc, risk_at_coverage
from dropout_lab.uncertainty import calibration_metrics, prediction_scores, update_calibration

# --- the numbers, against numpy ----------------------------------------------------------------------------


def brute_force_risks(confidence: np.ndarray, error: np.ndarray) -> np.ndarray:
    """The risk at each coverage k/N, averaged over every order of the tied confidences (the definition)."""
    risks = []
    for order in itertools.permutations(range(len(error))):
        order = np.array(order)
        ranked = order[np.argsort(-confidence[order], kind="stable")]  # ties in this permutation's order
        risks.append(np.cumsum(error[ranked]) / np.arange(1, len(error) + 1))
    return np.mean(risks, axis=0)


TIED = (np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.1, 0.7]), np.array([0, 1, 1, 0, 0, 1, 0]))


def test_aurc_and_risk_at_coverage_equal_the_mean_over_every_order_of_the_ties():
    confidence, error = TIED
    risks = brute_force_risks(confidence, error)
    c, e = torch.tensor(confidence), torch.tensor(error)
    assert aurc(c, e).item() == pytest.approx(risks.mean())
    # 80 % of 7 images, rounded up: the 6 most confident; 5 images is 5/7 = 71 %.
    assert risk_at_coverage(c, e, 0.8).item() == pytest.approx(risks[5])
    assert risk_at_coverage(c, e, 5 / 7).item() == pytest.approx(risks[4])


def test_a_perfect_ranking_reaches_the_least_aurc_and_a_reversed_one_the_most():
    error = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])  # 3 errors in 10
    perfect = -error.float() + torch.linspace(0, 0.1, 10)  # every error least confident
    reversed_ = -perfect
    k = np.arange(1, 11)
    assert aurc(perfect, error).item() == pytest.approx(np.mean(np.maximum(0, k - 7) / k))
    assert aurc(reversed_, error).item() == pytest.approx(np.mean(np.minimum(k, 3) / k))
    assert risk_at_coverage(perfect, error, 0.8).item() == pytest.approx(1 / 8)  # 8 answers, 1 wrong
    assert risk_at_coverage(reversed_, error, 0.8).item() == pytest.approx(3 / 8)
    assert risk_at_coverage(perfect, error, 0.7).item() == 0


def numpy_detection(inside: np.ndarray, outside: np.ndarray) -> dict[str, float]:
    """AUROC (Mann-Whitney, ties half), average precision and FPR at 95 % TPR, OOD positive, written out."""
    pairs = outside[:, None] - inside[None, :]
    auroc = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    thresholds = np.unique(np.concatenate([inside, outside]))[::-1]  # every distinct score, highest first
    ap, last_recall, fpr95 = 0.0, 0.0, None
    for t in thresholds:
        tp, fp = (outside >= t).sum(), (inside >= t).sum()
        recall = tp / len(outside)
        ap += (recall - last_recall) * tp / (tp + fp)
        last_recall = recall
        if fpr95 is None and recall >= 0.95:
            fpr95 = fp / len(inside)
    return {"auroc": auroc, "aupr": ap, "fpr95": fpr95}


def test_auroc_aupr_and_fpr95_equal_numpy_with_ties():
    inside = np.array([0.1, 0.2, 0.2, 0.5, 0.7, 0.7, 0.3, 0.9])
    # 20 OOD images, 95 % of them is 19: the 19th most foreign (0.35) flags 4 of the 8 test images, the 20th all.
    outside = np.array([0.05, 0.35, 0.7, 0.8, 0.9, 0.9, 0.6, 0.7, 1.0, 0.5, 0.95, 0.75, 0.85, 0.65, 0.55, 0.45])
    outside = np.concatenate([outside, [0.99, 0.98, 0.97, 0.96]])
    got = detection_metrics(torch.tensor(inside), torch.tensor(outside))
    expected = numpy_detection(inside, outside)
    assert {name: value.item() for name, value in got.items()} == pytest.approx(expected, abs=1e-6)
    assert expected["fpr95"] == 0.5 and 0.5 < expected["auroc"] < 1  # ties of test and OOD scores included


def test_perfect_and_reversed_detection_give_the_extremes():
    inside, outside = torch.arange(5.0), torch.arange(5.0) + 10
    perfect = detection_metrics(inside, outside)
    assert (perfect["auroc"].item(), perfect["aupr"].item(), perfect["fpr95"].item()) == (1.0, 1.0, 0.0)
    reversed_ = detection_metrics(-inside, -outside)
    assert (reversed_["auroc"].item(), reversed_["fpr95"].item()) == (0.0, 1.0)
    # Every OOD image ranked below the 5 test images: the k-th found at precision k / (5 + k).
    assert reversed_["aupr"].item() == pytest.approx(np.mean([k / (5 + k) for k in range(1, 6)]))


def test_the_test_metrics_rank_by_top_probability_and_by_mutual_information_only_when_given():
    torch.manual_seed(0)
    samples = torch.softmax(torch.randn(4, 50, 3) * 2, dim=-1)
    target = torch.randint(0, 3, (50,))
    one_pass = prediction_scores(samples[:1])
    assert "mutual_information" not in one_pass  # a single pass has no disagreement to score
    deterministic = calibration_metrics(3, "test/")
    update_calibration(deterministic, one_pass["probs"], target)
    assert set(deterministic.compute()) == {f"test/{m}" for m in ("acc", "nll", "ece", "brier", "aurc")} | {
        "test/risk_at_80_coverage"
    }
    scores = prediction_scores(samples)
    mc = calibration_metrics(3, "test_mc/", mutual_information=True)
    update_calibration(mc, scores["probs"][:20], target[:20], scores["mutual_information"][:20])
    update_calibration(mc, scores["probs"][20:], target[20:], scores["mutual_information"][20:])  # batches
    values = mc.compute()
    error = scores["probs"].argmax(dim=-1) != target
    assert values["test_mc/aurc"] == pytest.approx(aurc(scores["max_prob"], error).item())
    assert values["test_mc/aurc_mutual_information"] == pytest.approx(aurc(-scores["mutual_information"], error).item())
    expected = risk_at_coverage(-scores["mutual_information"], error, 0.8).item()
    assert values["test_mc/risk_at_80_coverage_mutual_information"] == pytest.approx(expected)


def test_ood_images_are_normalized_with_the_checkpoints_statistics_not_their_own():
    ood = ShiftedMNIST5kDataModule(shift="inverted", test_size=100, batch_size=100)
    x, _ = next(iter(ood_test_loader(ood, {"mean": [0.5], "std": [0.25]}, (1, 28, 28))))
    digits = MNIST5kDataModule(test_size=100)
    digits.setup("test")
    raw = digits.test_set.images  # the same 100 digits, before the shift
    assert torch.allclose(x, ((255 - raw).float() / 255 - 0.5) / 0.25)


class EmptyTestSet(MNIST5kDataModule):
    def load(self):
        images, labels, test_images, test_labels = super().load()
        return images, labels, test_images[:0], test_labels[:0]


def test_an_ood_set_without_images_or_of_another_shape_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^--ood_data=EmptyTestSet has no images to score") as error:
        ood_test_loader(EmptyTestSet(), {"mean": [0.1], "std": [0.3]}, (1, 28, 28))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"gives images of shape \(1, 28, 28\), but the checkpoint's model takes"):
        ood_test_loader(ShiftedMNIST5kDataModule(), {"mean": [0.1], "std": [0.3]}, (3, 32, 32))


# --- python train.py test --ood_data=... ------------------------------------------------------------------------

QUICK = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small MLP on the embedded digits, fitted for two steps by ``train.py fit``."""
    root = tmp_path_factory.mktemp("fit")
    fit = ["--model.hidden=[16]", "--data.batch_size=50", "--trainer.max_steps=2", "--trainer.limit_val_batches=1"]
    DropoutLabCLI(["fit", *fit, *QUICK, f"--trainer.default_root_dir={root}"], run=True)
    (path,) = root.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    return path


@pytest.fixture
def pngs(tmp_path) -> str:
    """Six noise images as PNG files: an out-of-distribution set made offline."""
    torch.manual_seed(1)
    for i in range(6):
        write_png(torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8), str(tmp_path / f"noise_{i}.png"))
    return str(tmp_path / "*.png")


def test_test_with_ood_data_logs_every_tag_and_draws_every_figure(tmp_path, checkpoint, pngs):
    args = ["test", f"--ckpt_path={checkpoint}", "--model.mc_samples=3", "--trainer.limit_test_batches=2", *QUICK]
    DropoutLabCLI([*args, "--ood_data=ImageFilesDataModule", f"--ood_data.paths={pngs}"], run=True)
    (run_dir,) = checkpoint.parent.parent.glob("test_*")
    tags = read_events(run_dir).Tags()
    selective = {"test/aurc", "test/risk_at_80_coverage", "test_mc/aurc", "test_mc/risk_at_80_coverage"}
    selective |= {"test_mc/aurc_mutual_information", "test_mc/risk_at_80_coverage_mutual_information"}
    scores = {"ood": ["max_prob", "entropy"], "ood_mc": ["max_prob", "entropy", "mutual_information"]}
    ood = {
        f"{loop}/{metric}_{s}" for loop, names in scores.items() for s in names for metric in ("auroc", "aupr", "fpr95")
    }
    assert selective | ood <= set(tags["scalars"])
    # Mutual information is scored only under MC dropout: a single pass has none.
    assert not {tag for tag in tags["scalars"] if tag.startswith(("test/", "ood/")) and "mutual" in tag}
    figures = {"test/risk_coverage"} | {f"{loop}/histogram_{s}" for loop, names in scores.items() for s in names}
    assert figures <= set(tags["images"])


@pytest.mark.parametrize("subcommand", ["fit", "validate", None])
def test_ood_data_outside_test_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, subcommand):
    args = [f"--trainer.default_root_dir={tmp_path}", "--ood_data=FashionMNISTDataModule"]
    with pytest.raises(SystemExit) as exit_info:
        DropoutLabCLI([subcommand, *args] if subcommand else args, run=subcommand is not None)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--ood_data scores out-of-distribution images in test only" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_ood_images_of_another_shape_or_none_stop_test_before_any_loop(tmp_path, capsys, checkpoint, pngs):
    args = ["test", f"--ckpt_path={checkpoint}", *QUICK, "--ood_data=ImageFilesDataModule"]
    logs_before = set(checkpoint.parent.parent.glob("test_*/events*"))
    for flags, message in [
        ([f"--ood_data.paths={pngs}", "--ood_data.input_shape=[1,14,14]"], "gives images of shape (1, 14, 14)"),
        ([f"--ood_data.paths={tmp_path}/none/*.png"], "names no image file"),
    ]:
        with pytest.raises(SystemExit):
            DropoutLabCLI([*args, *flags], run=True)
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert set(checkpoint.parent.parent.glob("test_*/events*")) == logs_before  # no loop ran, no log written
