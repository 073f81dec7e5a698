"""scripts/mc_passes.py: test error against N MC dropout passes and after abstaining, against a computation by hand."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from torchvision.io import read_image

from dropout_lab import load_classifier
from dropout_lab.cli import DropoutLabCLI
from dropout_lab.mc_dropout import dropout_layers_on

spec = importlib.util.spec_from_file_location("mc_passes", ROOT / "scripts" / "mc_passes.py")
mc_passes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mc_passes)

QUICK = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small MLP fitted for a few steps; 100 test digits in one batch."""
    root = tmp_path_factory.mktemp("fit")
    fit = ["--model.hidden=[32]", "--data.test_size=100", "--data.batch_size=100", "--trainer.max_steps=5"]
    fit += ["--trainer.limit_val_batches=1", f"--trainer.default_root_dir={root}"]
    DropoutLabCLI(["fit", *fit, *QUICK], run=True)
    (path,) = root.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    return path


def test_each_n_is_the_error_of_the_mean_of_the_first_n_passes_computed_by_hand(checkpoint):
    result = mc_passes.measure(checkpoint, passes=(1, 3), seed=7)
    model = load_classifier(checkpoint)
    data = mc_passes.load_test_split(checkpoint)
    ((x, y),) = list(data.test_dataloader())  # one batch of the 100 test digits
    assert result["images"] == len(y) == 100
    with torch.inference_mode():
        model.eval()
        deterministic = model(x).softmax(dim=-1)
        torch.manual_seed(7)
        dropout_layers_on(model)
        passes = [model(x).softmax(dim=-1) for _ in range(3)]
    assert not torch.allclose(passes[0], deterministic)  # the MC passes do drop units

    def error(probs):
        return (probs.argmax(dim=-1) != y).float().mean().item()

    assert result["deterministic"]["error"] == pytest.approx(error(deterministic))
    assert result["mc"]["1"]["error"] == pytest.approx(error(passes[0]))
    assert result["mc"]["3"]["error"] == pytest.approx(error(sum(passes) / 3))
    # Abstaining on the least sure 20 %: the error of the 80 most confident answers (no ties in float scores).
    mean = sum(passes) / 3
    wrong = (mean.argmax(dim=-1) != y).float()
    kept = mean.max(dim=-1).values.argsort(descending=True)[:80]
    assert result["mc"]["3"]["error_abstain_20_by_max_prob"] == pytest.approx(wrong[kept].mean().item())
    entropy_of_mean = -(mean * mean.log()).sum(-1)
    mean_entropy = sum(-(p * p.log()).sum(-1) for p in passes) / 3
    kept = (entropy_of_mean - mean_entropy).argsort()[:95]  # the least mutual information first
    assert result["mc"]["3"]["error_abstain_5_by_mutual_information"] == pytest.approx(wrong[kept].mean().item())
    assert "error_abstain_5_by_mutual_information" not in result["mc"]["1"]  # one pass has no disagreement


def test_summary_gives_mean_and_spread_over_checkpoints_and_main_writes_them(checkpoint, tmp_path, capsys):
    out = tmp_path / "mlp.json"
    mc_passes.main(["measure", str(checkpoint), str(checkpoint), "--passes", "1", "2", "--out", str(out)])
    data = json.loads(out.read_text())
    assert [run["seed"] for run in data["runs"]] == [0, 0]
    det = data["summary"]["deterministic"]["error"]
    assert det["std"] == 0 and det["mean"] == data["runs"][0]["deterministic"]["error"]  # the same weights twice
    assert "| MC dropout | 2 |" in capsys.readouterr().out
    mc_passes.main(["plot", str(out), "--out", str(tmp_path / "passes.png")])
    assert (tmp_path / "passes.png").stat().st_size > 0


def test_rotated_pngs_are_the_test_digits_turned_by_90_degrees(checkpoint, tmp_path):
    assert mc_passes.rotated_pngs(str(checkpoint), str(tmp_path)) == 100
    images = mc_passes.load_test_split(checkpoint).test_set.images
    first = read_image(str(tmp_path / "rotated_0000.png"))
    assert torch.equal(first, torch.rot90(images[0], 1, dims=(-2, -1)))
    assert not torch.equal(first, images[0])
