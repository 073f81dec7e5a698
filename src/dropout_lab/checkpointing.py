"""Checkpoints that a long run can trust: written atomically, read safely, resumed exactly.

- ``AtomicCheckpointIO`` writes to a temporary file beside the target and renames it, so a
  kill while saving leaves the previous ``last.ckpt`` whole, and it loads with
  ``weights_only=True``, so a crafted checkpoint cannot run code.
- ``RNGState`` puts the random number generators' states into every checkpoint and restores
  them when a fit resumes: the resumed run draws the same dropout masks and batch orders as a
  run that never stopped (Lightning's checkpoints hold no RNG state). validate, test and
  predict follow ``--seed_everything`` instead, so MC dropout samples can be drawn again.
- ``find_last_checkpoint`` and ``check_resumable`` serve ``--ckpt_path=last`` and refuse, before
  anything is written, a checkpoint that this run could not continue.
"""

import importlib
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

# Types that torch's weights_only unpickler must accept beyond tensors and plain Python values.
# Our checkpoints need none today; a DataModule argument typed ``Path`` would add pathlib.PosixPath.
SAFE_GLOBALS: list[Any] = []


def safe_load(path: str | Path, map_location: Any = "cpu") -> dict:
    """``torch.load`` with ``weights_only=True``: tensors and plain values only, never code."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to ``<path>.tmp`` in the same folder, fsync, then ``os.replace`` onto ``path``; load weights only.

    Lightning's own save renders the checkpoint in memory and moves a file from the system
    temporary folder: when that is another filesystem the move is a copy, which a kill can cut
    short, and nothing is fsynced. A rename within one folder is atomic.

    ``read``: a checkpoint that was read already (by the CLI, to check it), as (path, checkpoint); the Trainer's
    load of that path takes it rather than reading the file again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.read: tuple[str, dict] | None = None

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage (s3://...): Lightning's fsspec transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A fixed name: a temporary file left by a killed save is overwritten by the next one.
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | Path, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> dict:
        if self.read is not None and Path(self.read[0]).resolve() == Path(path).resolve():
            return self.read[1]
        # True when not given, rather than torch's default, which an environment variable can turn off.
        if weights_only is None:
            weights_only = True
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return super().load_checkpoint(path, *args, weights_only=weights_only, **kwargs)


# Mixed into the seed of every DDP rank's dropout stream, so that no rank's stream is the one
# seed_everything started, which drew the initial weights (any fixed number would do).
DROPOUT_STREAM_TAG = 0x64726F70  # "drop"


def seed_dropout_stream(seed: int, rank: int) -> None:
    """Seed the torch generators (CPU and CUDA) of DDP rank ``rank`` from (seed, rank, a fixed tag).

    ``manual_seed(seed + rank)`` would give rank 0 the stream that drew the initial weights (its
    first input masks were ``W1 < threshold``), and rank r at seed s the stream of rank r-1 at
    seed s+1. SeedSequence mixes the three numbers into unrelated seeds.
    """
    (mixed,) = np.random.SeedSequence([seed, rank, DROPOUT_STREAM_TAG]).generate_state(1, np.uint64)
    torch.manual_seed(int(mixed))


def rng_states() -> dict:
    """The states of every generator a run draws from, as tensors and plain Python values.

    Not numpy arrays: ``trainer.test(ckpt_path=...)`` loads with ``weights_only=True``, which refuses them.
    """
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {"key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"]}
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": numpy_state,
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    saved_cuda = states["torch.cuda"]
    if saved_cuda and torch.cuda.is_available():
        # The checkpoint may come from a machine with another number of visible GPUs.
        devices = torch.cuda.device_count()
        if len(saved_cuda) != devices:
            rank_zero_warn(
                f"The checkpoint holds the random states of {len(saved_cuda)} GPUs and this process sees "
                f"{devices}: the states of GPUs 0 to {min(len(saved_cuda), devices) - 1} are restored, so the "
                "masks drawn on the others differ from those of the run that wrote it."
            )
        for device, state in enumerate(saved_cuda[:devices]):
            torch.cuda.set_rng_state(state, device)
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


class RNGState(L.Callback):
    """Store every rank's generator states in each checkpoint; give each rank its own back on resume.

    Exact for checkpoints written at the end of an epoch (see ``check_resumable``): nothing
    draws between that save and the next epoch's first draw. Lightning loads this state before
    the sanity check, which it runs under ``isolate_rng``, and before the fit loop creates the
    training DataLoader's iterator (whose sampler draws the epoch's order).

    Under DDP each rank draws its own dropout masks (see ``seed_dropout_stream``): the states of
    all ranks are gathered into the checkpoint, which rank 0 writes, and each resumed rank takes
    back the states of the rank that drew them. A run resumed on another number of processes
    cannot draw the same masks; each rank then seeds a stream of its own from the saved ones.
    """

    def __init__(self) -> None:
        self.rank, self.world_size = 0, 1
        self.fitting = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning calls setup before it loads a checkpoint's callback states.
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        self.fitting = trainer.state.fn == TrainerFn.FITTING

    def state_dict(self) -> dict:
        # Lightning builds the checkpoint on every rank (rank 0 writes it): all ranks join the gather.
        states = [rng_states()]
        if self.world_size > 1:
            states = [None] * self.world_size
            torch.distributed.all_gather_object(states, rng_states())
        return {"world_size": self.world_size, "ranks": states}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning calls this for every trainer.*(ckpt_path=...): restoring the states in test or
        # predict would draw the training run's next masks whatever --seed_everything says.
        if not self.fitting:
            return
        if "ranks" not in state_dict:  # a checkpoint written before the states were saved per rank
            state_dict = {"world_size": 1, "ranks": [state_dict]}
        saved = state_dict["world_size"]
        if saved == self.world_size:
            set_rng_states(state_dict["ranks"][self.rank])
            return
        if self.rank == 0:
            print(
                f"The checkpoint was written by {saved} processes and {self.world_size} resume it: the dropout "
                "masks and batch orders will differ from those of an uninterrupted run."
            )
        set_rng_states(state_dict["ranks"][0])
        if self.world_size > 1:
            seed_dropout_stream(int(torch.randint(2**62, ())), self.rank)


def find_last_checkpoint(root: Path) -> Path:
    """The newest ``last.ckpt`` of the runs under a logger's root folder (``<root>/version_N/checkpoints``)."""
    found = sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ValueError(
            f"--ckpt_path=last found no last.ckpt under {root}/*/checkpoints/. Check --trainer.default_root_dir "
            "(or the logger's save_dir and name: they must be the run's), pass a checkpoint's path, or leave "
            "--ckpt_path out to start a new run."
        )
    return found[-1]


def check_resumable(
    path: str | Path,
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    checkpoint: dict | None = None,
) -> None:
    """Raise a ValueError saying what is wrong if this run cannot continue from the checkpoint at ``path``.

    Done before the Trainer writes anything, so a mistyped path leaves no empty run behind. The model's
    and the data's arguments must be the checkpoint's; the Trainer's may change: a larger
    ``--trainer.max_epochs`` extends the run (the cosine follows the new length). ``checkpoint``: the one at
    ``path``, if the caller has read it already.
    """
    checkpoint = checkpoint or load_checked(path)
    check_weights_fit(path, checkpoint, model)
    _check_same_hparams("data", checkpoint.get("datamodule_hyper_parameters"), datamodule)
    _check_same_model_hparams(checkpoint.get("hyper_parameters"), model)
    if not checkpoint["loops"].get("fit_loop", {}).get("epoch_loop.batch_progress", {}).get("is_last_batch", True):
        rank_zero_warn(
            f"--ckpt_path={path} was written in the middle of epoch {checkpoint.get('epoch')} (global step "
            f"{checkpoint.get('global_step')}): the resumed run goes on from there on other batches than the run "
            "that wrote it would have seen. Resume from last.ckpt, written at every epoch end, to continue exactly."
        )


def load_checked(path: str | Path) -> dict:
    """The checkpoint at ``path``, or a ValueError saying why it is not a loadable Lightning checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--ckpt_path={path}: no such file. Pass an existing .ckpt file, or --ckpt_path=last.")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            # Else torch's unpickler fails on the first byte and advises weights_only=False, which is no cure.
            raise ValueError(
                f"--ckpt_path={path} is not a checkpoint (not a file written by torch.save): pass a run's .ckpt "
                "file, e.g. lightning_logs/version_N/checkpoints/last.ckpt, or --ckpt_path=last."
            )
    try:
        checkpoint = safe_load(path)
    except Exception as error:  # torch's message names the cause: a bad zip, an unsafe global, ...
        lines = str(error).strip().splitlines()
        reason = " ".join([lines[0], *(line for line in lines if "GLOBAL" in line)])
        raise ValueError(
            f"--ckpt_path={path} cannot be loaded: it is truncated, corrupt, or holds objects that would run "
            f"code when unpickled (only tensors and plain values are loaded). torch says: {reason}"
        ) from None  # the reason is in the message; the CLI shows it as one line
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise ValueError(f"--ckpt_path={path} is not a Lightning training checkpoint (no state_dict or loop state).")
    return checkpoint


def check_weights_fit(path: str | Path, checkpoint: dict, model: L.LightningModule) -> None:
    """A ValueError listing the weights of ``checkpoint`` that are missing from ``model`` or of another shape."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in checkpoint["state_dict"].items()}
    problems = [f"missing {key}" for key in expected if key not in found]
    problems += [f"unexpected {key}" for key in found if key not in expected]
    problems += [
        f"{key} has shape {found[key]}, the model {expected[key]}"
        for key in expected.keys() & found.keys()
        if found[key] != expected[key]
    ]
    if problems:
        saved_class = checkpoint.get("hyper_parameters", {}).get("_class_path", "another model")
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else "")
        raise ValueError(
            f"--ckpt_path={path} holds weights of {saved_class} that do not fit this {type(model).__name__}: "
            f"{shown}. Use the model and arguments that wrote it (see config.yaml beside it)."
        )


def _check_same_hparams(section: str, saved: dict | None, current: L.LightningDataModule | None) -> None:
    # The class, split seed and sizes decide which images are validation images: a resumed run with
    # other values would train on images that were held out before, or on other data altogether.
    # num_workers is compared too: with augmentation, it decides which process draws the crops.
    if saved is None or current is None:
        return
    saved_class, current_class = saved.get("_class_path"), type(current)
    if saved_class is not None and _import_class(saved_class) is not current_class:
        raise ValueError(
            f"Resuming with another DataModule than the run that wrote the checkpoint would not continue that run "
            f"({section}: {saved_class} in the checkpoint, {current_class.__module__}.{current_class.__qualname__} "
            f"now). Pass --{section}={saved_class}, or start a new run without --ckpt_path."
        )
    differ = [
        f"{section}.{key}: {saved[key]!r} in the checkpoint, {current.hparams.get(key)!r} now"
        for key in saved.keys() - {"_class_path", "_instantiator"}
        if _plain(saved[key]) != _plain(current.hparams.get(key))
    ]
    if differ:
        raise ValueError(
            "Resuming with other data arguments than the run that wrote the checkpoint would not continue "
            f"that run ({'; '.join(sorted(differ))}). Pass the same values, or start a new run without --ckpt_path."
        )


# Model arguments that do not change what is trained: the passes per image of test and predict, and
# whether the network is compiled (the same weights and masks, computed faster).
FREE_MODEL_ARGUMENTS = {"mc_samples", "compile"}


def _check_same_model_hparams(saved: dict | None, model: L.LightningModule) -> None:
    # A changed lr would be recorded but not used (the optimizer's state keeps the old one), a changed
    # dropout rate would train on under the old one's name: TensorBoard keeps a run's first HParams only.
    if saved is None:
        return
    differ = [
        f"model.{key}: {saved[key]!r} in the checkpoint, {model.hparams.get(key)!r} now"
        for key in saved.keys() - {"_class_path", "_instantiator"} - FREE_MODEL_ARGUMENTS
        if _plain(saved[key]) != _plain(model.hparams.get(key))
    ]
    if differ:
        raise ValueError(
            f"Resuming with other model arguments than the run that wrote the checkpoint ({'; '.join(sorted(differ))}) "
            "would not continue that run: resume with the checkpoint's values, or start a new run without --ckpt_path."
        )


def _import_class(class_path: str) -> type | None:
    """The class named by a checkpoint's ``_class_path``, or None if it cannot be imported here."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
