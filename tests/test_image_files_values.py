"""Your own image files: which files a folder gives, and the exact values the model is fed."""

import torch
from torchvision.io import write_png

from dropout_lab import ImageFilesDataModule

SHAPE = (1, 4, 4)


def gradient() -> torch.Tensor:
    """A 4 x 4 grey image of 16 different values, 0 to 255."""
    return torch.tensor([0, 17, 34, 51, 68, 85, 102, 119, 136, 153, 170, 187, 204, 221, 238, 255], dtype=torch.uint8)


def test_each_pixel_is_fed_as_value_over_255_minus_mean_over_std(tmp_path):
    write_png(gradient().view(SHAPE), str(tmp_path / "a.png"))
    data = ImageFilesDataModule(str(tmp_path / "a.png"), input_shape=SHAPE, mean=(0.2,), std=(0.4,))
    (x,) = next(iter(data.predict_dataloader()))
    expected = (gradient().double() / 255 - 0.2) / 0.4
    torch.testing.assert_close(x.flatten().double(), expected, atol=1e-6, rtol=0)


def test_a_folder_gives_its_images_whatever_the_case_of_the_suffix_and_nothing_else(tmp_path):
    for name in ("a.png", "B.PNG", "c.JPG"):
        write_png(gradient().view(SHAPE), str(tmp_path / name))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.csv").write_text("file,label\n")
    data = ImageFilesDataModule(str(tmp_path), input_shape=SHAPE, mean=(0.1,), std=(0.3,))
    assert sorted(p.name for p in data.files) == ["B.PNG", "a.png", "c.JPG"]


def test_dark_ink_on_white_paper_gets_one_line_naming_invert(tmp_path, caplog):
    paper = torch.full(SHAPE, 240, dtype=torch.uint8)
    paper[0, 1:3, 1] = 10  # a dark stroke
    write_png(paper, str(tmp_path / "ink.png"))
    write_png(255 - paper, str(tmp_path / "mnist_like.png"))  # light on dark, as the training digits
    with caplog.at_level("INFO"):
        ImageFilesDataModule(str(tmp_path / "ink.png"), input_shape=SHAPE, mean=(0.1307,), std=(0.3081,))
    (line,) = [r.getMessage() for r in caplog.records if "brightness" in r.getMessage()]
    said = "The images' mean brightness is 0.83, the training data's 0.13: dark ink on light paper?"
    assert line == f"{said} add --data.invert=true"
    caplog.clear()
    with caplog.at_level("INFO"):
        ImageFilesDataModule(str(tmp_path / "ink.png"), invert=True, input_shape=SHAPE, mean=(0.1307,), std=(0.3081,))
        ImageFilesDataModule(str(tmp_path / "mnist_like.png"), input_shape=SHAPE, mean=(0.1307,), std=(0.3081,))
    assert not [r for r in caplog.records if "brightness" in r.getMessage()]
