"""Your own images (PNG, JPEG) as a DataModule for ``python train.py predict``.

    python train.py predict --ckpt_path=RUN/checkpoints/last.ckpt \\
        --data=ImageFilesDataModule --data.paths='my_digits/*.png'

The images are converted to the model's input shape and normalized with the statistics of the
data it was trained on; ``train.py predict`` fills both from the checkpoint. MNIST digits are
light strokes on a dark background: a digit written in dark ink on white paper needs ``invert``.
"""

import glob
import re
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import resize

EXTENSIONS = (".png", ".jpg", ".jpeg")


class ImageFilesDataModule(L.LightningDataModule):
    """Image files to predict: a glob, a folder or a list of them; files are taken in sorted order.

    Args:
        paths: a glob ('my_digits/*.png'), a folder (its .png, .jpg and .jpeg files) or a list of these.
            The predictions CSV's ``path`` column names each file as found here (relative paths stay relative).
        invert: invert the pixels (1 - value, values in [0, 1]): for dark ink on light paper with a model
            trained on MNIST, whose digits are light on a dark background.
        batch_size: images per batch.
        input_shape: (channels, height, width) the images are converted to; default: the checkpoint's model's.
        num_classes: number of classes; default: the checkpoint's model's.
        mean: per-channel mean of the training data (pixels in [0, 1]); default: from the checkpoint.
        std: per-channel standard deviation of the training data; default: from the checkpoint.
    """

    def __init__(
        self,
        paths: str | list[str],
        invert: bool = False,
        batch_size: int = 64,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        missing = [name for name, value in [("input_shape", input_shape), ("mean", mean), ("std", std)] if not value]
        if missing:
            raise ValueError(
                f"ImageFilesDataModule needs {', '.join(missing)}: train.py predict takes them from the checkpoint, "
                "which has none (it was written before checkpoints carried them). Pass --data.input_shape, "
                "--data.mean and --data.std of the training data."
            )
        self.save_hyperparameters(logger=False)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.mean, self.std = tuple(mean), tuple(std)
        self.files = find_images(paths)
        # Decoded now, so that a file that cannot be read stops the run before anything is written.
        self.images = torch.stack([read_image(path, self.input_shape, invert) for path in self.files])
        if hint := brightness_hint(self.images, self.mean, invert):
            rank_zero_info(hint)

    def predict_dataloader(self) -> DataLoader:
        dataset = NormalizedImages(self.images, self.mean, self.std)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, collate_fn=lambda batch: batch)


def brightness_hint(images: Tensor, mean: Sequence[float], invert: bool) -> str | None:
    """A line naming --data.invert when the images' mean brightness is far from the training data's, else None.

    Far: more than 0.3 apart (pixels in [0, 1]), and nearer once inverted. MNIST's mean is 0.13; black ink on
    white paper is about 0.9, and a model then gives confident wrong answers (seven such digits: all "0").
    """
    seen, trained = images.mean().item(), sum(mean) / len(mean)
    if abs(seen - trained) <= 0.3 or abs(1 - seen - trained) >= abs(seen - trained):
        return None
    fix = (
        "light on dark already? leave out --data.invert"
        if invert
        else "dark ink on light paper? add --data.invert=true"
    )
    return f"The images' mean brightness is {seen:.2f}, the training data's {trained:.2f}: {fix}"


def find_images(paths: str | list[str]) -> list[Path]:
    """The image files that ``paths`` names, sorted; a ValueError if a pattern or folder gives none."""
    found: set[Path] = set()
    for pattern in [paths] if isinstance(paths, str) else paths:
        if Path(pattern).is_dir():
            matches = [p for p in Path(pattern).iterdir() if p.suffix.lower() in EXTENSIONS]
        else:
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
        if not matches:
            raise ValueError(
                f"paths={pattern!r} names no image file: give a glob ('my_digits/*.png'), a folder of "
                f"{', '.join(EXTENSIONS)} files, or a list of them."
            )
        found.update(matches)
    return sorted(found)


def read_image(path: Path, input_shape: tuple[int, ...], invert: bool) -> Tensor:
    """A file as floats in [0, 1], (channels, height, width) of ``input_shape``; a ValueError naming it if unreadable.

    Scaled by the range of the file's pixel type: a 16-bit PNG (uint16, up to 65535) and its 8-bit
    version (uint8, up to 255) give the same input.
    """
    channels, height, width = input_shape
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        image = decode_image(str(path), mode=mode)
    except (RuntimeError, OSError, ValueError) as error:
        raise ValueError(
            f"cannot read the image {path}: {why_unreadable(error)}. Remove it or pass only PNG and JPEG files."
        ) from None
    if image.shape[0] != channels:
        raise ValueError(f"{path} has {image.shape[0]} channels, the model takes {channels}")
    image = image.float() / torch.iinfo(image.dtype).max
    image = resize(image, [height, width], antialias=True)
    return 1 - image if invert else image


def why_unreadable(error: Exception) -> str:
    """torchvision's decoding error without the C++ source location it starts with ("decode_png.cpp:79, ...")."""
    reason = re.sub(r"^.*?\.cpp:\d+, ", "", " ".join(str(error).split())).rstrip(".")
    if reason.startswith("Unsupported image file"):
        return "it is not an image (not a PNG, JPEG, WebP or GIF file)"
    return reason


class NormalizedImages(Dataset):
    """Images in [0, 1] served as normalized batches of one tensor, ``(images,)``: no labels."""

    def __init__(self, images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.images = images
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor]:
        return ((self.images[torch.as_tensor(indices)] - self.mean) / self.std,)

    def __getitem__(self, index: int) -> tuple[Tensor]:
        return (self.__getitems__([index])[0][0],)
