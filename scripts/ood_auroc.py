"""Does the uncertainty tell unseen kinds of images apart? AUROC of out-of-distribution detection.

    python scripts/ood_auroc.py lightning_logs/version_0/checkpoints/last.ckpt --mc_samples 30

The in-distribution images are the test split of the checkpoint's run (its DataModule and
arguments); the out-of-distribution sets are the same images rotated by 90 degrees and inverted
(dark digits on light), built here, no download. The score of an image is its predictive
entropy (deterministic and MC) or its mutual information (MC only); AUROC 1.0 separates the two
sets perfectly, 0.5 is chance. Mutual information is zero when the passes agree, so its AUROC is
0.5 when the sampling does nothing (dropout off, or the same masks every pass).
"""

import argparse
import importlib
import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_auroc

from dropout_lab import load_classifier
from dropout_lab.checkpointing import safe_load


def test_split(checkpoint_path: str) -> L.LightningDataModule:
    """The checkpoint's DataModule, set up: its test split is the one that run held out."""
    hparams = dict(safe_load(checkpoint_path)["datamodule_hyper_parameters"])
    module, _, name = hparams.pop("_class_path").rpartition(".")
    hparams.pop("_instantiator", None)
    data = getattr(importlib.import_module(module), name)(**hparams)
    data.prepare_data()
    data.setup("test")
    return data


def predict(model, images: torch.Tensor, labels: torch.Tensor, mc_samples: int) -> dict[str, torch.Tensor]:
    mean = torch.tensor(model.normalization["mean"]).view(-1, 1, 1)
    std = torch.tensor(model.normalization["std"]).view(-1, 1, 1)
    # The same normalization as in training (the test set's own uint8 images, normalized here).
    loader = DataLoader(TensorDataset((images.float() / 255 - mean) / std, labels), batch_size=250)
    model.mc_samples = mc_samples
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    outputs = trainer.predict(model, loader)
    return {key: torch.cat([out[key] for out in outputs]) for key in outputs[0]}


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """How well a higher score marks the out-of-distribution images."""
    is_outside = torch.cat([torch.zeros(len(inside)), torch.ones(len(outside))]).long()
    return binary_auroc(torch.cat([inside, outside]), is_outside).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--mc_samples", type=int, default=30)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    model = load_classifier(args.checkpoint)
    data = test_split(args.checkpoint)
    images, labels = data.test_set.images, data.test_set.labels
    # Checkpoints written before they carried the normalization: the DataModule's is the same.
    model.normalization = model.normalization or {"mean": list(data.mean), "std": list(data.std)}
    sets = {"rotated 90 degrees": images.rot90(1, dims=(2, 3)), "inverted": 255 - images}
    deterministic = predict(model, images, labels, 1)
    mc = predict(model, images, labels, args.mc_samples)
    n = args.mc_samples
    accuracy = {k: (out["probs"].argmax(1) == labels).float().mean().item() for k, out in [(1, deterministic), (n, mc)]}
    print(f"{len(images)} test images; accuracy deterministic {accuracy[1]:.3f}, MC-{n} {accuracy[n]:.3f}")
    print(f"| out-of-distribution set | entropy, deterministic | entropy, MC-{n} | mutual information, MC-{n} |")
    print("|---|---|---|---|")
    for name, ood in sets.items():
        ood_deterministic = predict(model, ood, labels, 1)
        ood_mc = predict(model, ood, labels, n)
        row = [
            auroc(deterministic["entropy"], ood_deterministic["entropy"]),
            auroc(mc["entropy"], ood_mc["entropy"]),
            auroc(mc["mutual_information"], ood_mc["mutual_information"]),
        ]
        print(f"| {name} | " + " | ".join(f"{value:.3f}" for value in row) + " |")


if __name__ == "__main__":
    main()
