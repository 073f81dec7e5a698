"""Checks of downloaded dataset files: clear errors that say what is missing or corrupt and how to fix it."""

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import numpy as np
from torchvision.datasets.utils import check_integrity


class DatasetFilesError(RuntimeError):
    """A dataset's files are missing or corrupt; the one-line message says which and what to do (train.py shows
    it alone, without a traceback)."""


class MissingDatasetFiles(DatasetFilesError, FileNotFoundError):
    """Files that are not there."""


def require_files(dataset: str, folder: Path, md5: dict[str, str | None], why: str, or_else: str) -> None:
    """Raise MissingDatasetFiles (what is missing, how to get it) or DatasetFilesError (which file fails its MD5)."""
    missing = [name for name in md5 if not (folder / name).is_file()]
    if missing:
        raise MissingDatasetFiles(
            f"{dataset} files not found in {folder}/ ({why}). Missing: {', '.join(missing)}. "
            f"To get them, run once on a machine with network access with --data.download=true and the same "
            f"--data.data_dir, or copy them there from an existing download, or {or_else}"
        )
    for name, checksum in md5.items():
        if checksum is not None and not check_integrity(folder / name, checksum):
            raise DatasetFilesError(corrupt(folder / name, f"its MD5 checksum is not {checksum}"))


def corrupt(path: Path, why: str) -> str:
    """The message for a file that is there but is not the right one."""
    return f"{path} is corrupt or truncated ({why}): delete it and download it again (--data.download=true)."


def try_download(fetch: Callable[[], object], folder: Path) -> str | None:
    """Run torchvision's download into ``folder``; return why it failed (for the missing-files message), or None.

    A failed download removes the folders it created on the way to ``folder`` (torchvision makes them
    before it tries the network), with what they hold; folders and files that were there stay.
    """
    created = outermost_missing_folder(folder)
    try:
        fetch()
    except (URLError, OSError, RuntimeError) as err:  # torchvision wraps some URLErrors into RuntimeError
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        return "the download failed: " + " ".join(str(err).split())
    return None


def outermost_missing_folder(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet; None if ``folder`` exists."""
    missing = None
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        missing = path
    return missing


def why_missing(download: bool, failure: str | None) -> str:
    """Why the files can be missing, for the message of require_files."""
    if failure:
        return failure
    if not download:
        return "downloading is off: --data.download=false"
    return "prepare_data() downloads them, in one process per machine"


def check_idx(path: Path) -> None:
    """Raise a DatasetFilesError naming ``path`` if it is not a complete IDX file of unsigned bytes."""
    # torchvision checks the MD5 sums of the .gz downloads only, not of the extracted files it reads.
    with open(path, "rb") as f:
        magic = f.read(4)
        ndim = magic[3] if len(magic) == 4 else 0
        dims = np.frombuffer(f.read(4 * ndim), dtype=">u4")
    if magic[:3] != b"\0\0\x08" or len(dims) != ndim:
        raise DatasetFilesError(corrupt(path, "no IDX header of unsigned bytes"))
    size = 4 + 4 * ndim + math.prod(int(d) for d in dims)
    if path.stat().st_size != size:
        raise DatasetFilesError(corrupt(path, f"{path.stat().st_size} bytes where its header promises {size}"))
