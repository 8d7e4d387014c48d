"""Image batches stored as .npz (ADM format): memory-mapped reading and a Dataset over them.

Samples and reference batches are npz files whose `arr_0` is uint8 (N, H, W, 3), NHWC, as
written by ADM/DiT `sample_ddp.py` and by the official reference batches
(VIRTUAL_imagenet256_labeled.npz: 10,000 images at 256x256 = 1.97 GB).

`np.load(path, mmap_mode="r")` does NOT memory-map members of an .npz: numpy reads the
whole member into RAM (checked with numpy 2.4.6: it returns a plain ndarray). An
uncompressed npz is a zip whose members are stored byte-for-byte, so we find the member's
data offset inside the zip and `np.memmap` it ourselves. Compressed members
(`np.savez_compressed`) cannot be mapped; they are read into memory instead.
"""

import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from udit.errors import BadValueError

ZIP_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header (APPNOTE 4.3.7)
ZIP_LOCAL_HEADER_MAGIC = b"PK\x03\x04"
# public header readers of the .npy format versions numpy writes for plain arrays
NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def npz_keys(path: str | Path) -> list[str]:
    """Member names of an npz without reading any array."""
    with _open_zip(path) as zf:
        return [name.removesuffix(".npy") for name in zf.namelist()]


def _open_zip(path: str | Path) -> zipfile.ZipFile:
    """The npz as a zip; a truncated or foreign file is a BadValueError naming it (zipfile's
    BadZipFile names no file)."""
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise BadValueError(f"{path}: not a valid .npz file (truncated or corrupt: {err})") from err


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored zip member's first data byte (after its local header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(ZIP_LOCAL_HEADER_SIZE)
        if header[:4] != ZIP_LOCAL_HEADER_MAGIC:
            raise BadValueError(f"{path}: corrupt zip local header for member {info.filename!r}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + ZIP_LOCAL_HEADER_SIZE + name_len + extra_len


def open_npz_array(path: str | Path, key: str) -> np.ndarray:
    """Return `key` of the npz at `path`, memory-mapped (read-only) when the member is stored.

    Falls back to an in-memory array for compressed members, Fortran-ordered or object
    arrays and .npy format versions without a public header reader.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    member = f"{key}.npy"
    with _open_zip(path) as zf:
        if member not in zf.namelist():
            raise BadValueError(f"{path}: no array {key!r} (has {npz_keys(path)})")
        info = zf.getinfo(member)
        stored = info.compress_type == zipfile.ZIP_STORED
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = NPY_HEADER_READERS.get(version)
            if read_header is not None:
                shape, fortran, dtype = read_header(f)
                npy_header_len = f.tell()
    if not stored or read_header is None or fortran or dtype.hasobject:
        with np.load(path, allow_pickle=False) as data:
            return data[key]
    offset = _member_data_offset(path, info) + npy_header_len
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")


def check_images(images: np.ndarray, *, what: str) -> None:
    """ADM batches are uint8 NHWC with 3 channels; anything else is a clear error."""
    if images.dtype != np.uint8:
        raise BadValueError(f"{what}: arr_0 must be uint8 in [0, 255], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise BadValueError(f"{what}: arr_0 must be (N, H, W, 3) NHWC, got shape {images.shape}")
    if images.shape[0] == 0:
        raise BadValueError(f"{what}: arr_0 holds no images")


class NpzImages(Dataset):
    """uint8 (3, H, W) tensors from an npz's `arr_0` (NHWC), for torch-fidelity extractors.

    The memmap is opened lazily in each process, so DataLoader workers do not pickle (copy)
    the images; only the path travels to them.
    """

    def __init__(self, path: str | Path, *, key: str = "arr_0", limit: int | None = None):
        self.path, self.key = Path(path), key
        images = open_npz_array(self.path, key)
        check_images(images, what=str(self.path))
        self.shape = tuple(images.shape)  # (N, H, W, 3)
        if limit is not None and not 0 < limit <= self.shape[0]:
            raise BadValueError(
                f"{self.path}: asked for {limit} images, file holds {self.shape[0]}"
            )
        self.length = self.shape[0] if limit is None else limit
        self._images = None  # opened per process in __getitem__

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._images is None:
            self._images = open_npz_array(self.path, self.key)
        image = np.array(self._images[index])  # (H, W, 3) uint8, a writable copy off the memmap
        return torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W) uint8

    def __getstate__(self):
        return {**self.__dict__, "_images": None}


class ArrayImages(Dataset):
    """uint8 (3, H, W) tensors from an in-memory (N, H, W, 3) array."""

    def __init__(self, images: np.ndarray):
        check_images(images, what="images")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1)  # (3, H, W) uint8
