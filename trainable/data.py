"""CIFAR-10 (or any image-folder dataset) decoded once into uint8 arrays, cached, split.

Sources, auto-detected in the data dir:
- torchvision's files: `cifar-10-batches-py/` or `cifar-10-python.tar.gz` (checksummed by
  torchvision, downloaded into the dir when neither is there and the network allows);
- an image-folder tree: `train/<class>/*` and `test/<class>/*`, classes sorted by folder name;
- `synthetic`: small, deterministic, learnable data made in memory (tests, smoke runs).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from trainable.files import fsync
from trainable.settings import Strict

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch  # imported where images are decoded: a driver may not need torch yet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CACHE_VERSION = 1  # bump when the cached array layout changes
ARRAY_NAMES = ("train_x", "train_y", "test_x", "test_y")
CACHED_NAMES = (*ARRAY_NAMES, "train_moments")  # moments make the split's statistics instant


class DataError(ValueError):
    """The data dir cannot be used; the message says what to place where."""


class DataConfig(Strict):
    """Where the data comes from and how it is split: the config's `data` section."""

    dir: str = "data"  # CIFAR-10's files or an image-folder tree (see the module's docstring)
    # auto: detected in `dir`; synthetic: small learnable data made in memory (tests, smoke runs)
    source: Literal["auto", "torchvision", "imagefolder", "synthetic"] = "auto"
    val_size: int = Field(5000, ge=0)  # images held out of train for validation; 0 = none
    split_seed: int = 0  # fixed across trials: every trial sees the same split
    train_subset: int | None = Field(None, ge=1)  # stratified subset of train (smoke runs)
    test_subset: int | None = Field(None, ge=1)  # stratified subset of test (smoke runs)
    cache_dir: str | None = None  # decoded arrays; default ~/.cache/cifar-tune


@dataclass
class DataBundle:
    """Everything a trial reads: uint8 images N×C×H×W, int64 labels, and the train statistics."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    mean: np.ndarray  # per-channel mean of the training split, in [0, 1]
    std: np.ndarray
    fingerprint: str  # hash of the decoded arrays before splitting
    source: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


@dataclass(frozen=True)
class DataLocation:
    """A dataset found but not yet read: its source, its files and its cache folder."""

    spec: DataConfig
    source: str
    root: Path | None = None  # None: synthetic
    files: tuple[str, ...] = ()  # what the cache key covers (image-folder: every image)
    cache: Path | None = None


def load_dataset(spec: DataConfig) -> DataBundle:
    """Load (decoding once, then from cache), subset and split the data `spec` names."""
    return read_dataset(locate_dataset(spec))


def locate_dataset(spec: DataConfig) -> DataLocation:
    """Find the data `spec` names without reading it: DataError at once where the dir holds
    no dataset. Lists the files to key the cache: cheap next to decoding them."""
    if spec.source == "synthetic":
        return DataLocation(spec, "synthetic")
    try:
        root = Path(spec.dir).expanduser().resolve(strict=False)
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop, before Python 3.13
        raise DataError(
            f"--data-dir {spec.dir} cannot be resolved ({err}); fix its symlinks"
        ) from None
    source = _detect(root) if spec.source == "auto" else spec.source
    files = _torchvision_files(root) if source == "torchvision" else _image_files(root)
    cache_root = Path(spec.cache_dir or Path.home() / ".cache" / "cifar-tune").expanduser()
    cache = cache_root / _cache_key(source, root, files)
    return DataLocation(spec, source, root, tuple(map(str, files)), cache)


def read_dataset(location: DataLocation, check: Callable[[str], None] | None = None) -> DataBundle:
    """Read (decoding once, then from cache), subset and split the data found at `location`.

    `check` gets the data's fingerprint before anything else looks at the arrays (a resumed
    run refuses other data there, before their size can fail a split)."""
    spec = location.spec
    arrays, classes, fingerprint = _load_arrays(location)
    if check is not None:
        check(fingerprint)
    train_x, train_y, test_x, test_y = (arrays[name] for name in ARRAY_NAMES)
    moments = arrays["train_moments"]
    if spec.train_subset is not None and spec.train_subset < len(train_y):
        keep, _ = stratified_split(train_y, len(train_y) - spec.train_subset, spec.split_seed)
        train_x, train_y, moments = train_x[keep], train_y[keep], moments[keep]
    if spec.test_subset is not None and spec.test_subset < len(test_y):
        keep, _ = stratified_split(test_y, len(test_y) - spec.test_subset, spec.split_seed)
        test_x, test_y = test_x[keep], test_y[keep]
    if spec.val_size >= len(train_y):
        raise DataError(
            f"data.val_size ({spec.val_size}) must be smaller than the training set "
            f"({len(train_y)} images); lower data.val_size"
        )
    train_idx, val_idx = stratified_split(train_y, spec.val_size, spec.split_seed)
    # Fancy indexing copies: the bundle owns compact, contiguous arrays for the object store.
    train_x, val_x = train_x[train_idx], train_x[val_idx]
    train_y, val_y = train_y[train_idx], train_y[val_idx]
    # Statistics of the training split only: validation and test stay unseen.
    mean, std = channel_stats(moments[train_idx], train_x[0, 0].size)
    source = location.source
    return DataBundle(
        train_x, train_y, val_x, val_y, test_x, test_y, classes, mean, std, fingerprint, source
    )


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with `size` held out, each class in proportion."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(labels)
    take = np.floor(quota).astype(int)
    # Largest remainders get the leftover places, so the sizes add up to `size` exactly.
    leftover = size - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:leftover]] += 1
    held = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    held_out = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask), held_out


def pixel_moments(images: np.ndarray) -> np.ndarray:
    """Per image and channel, the sum and sum of squares of its uint8 values (N×C×2, exact)."""
    flat = images.reshape(len(images), images.shape[1], -1)
    moments = np.empty((len(images), images.shape[1], 2), dtype=np.int64)
    for start in range(0, len(images), 4096):  # chunks keep the int64 copy small
        chunk = flat[start : start + 4096].astype(np.int64)
        moments[start : start + 4096, :, 0] = chunk.sum(-1)
        moments[start : start + 4096, :, 1] = (chunk * chunk).sum(-1)
    return moments


def channel_stats(moments: np.ndarray, pixels_per_channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std in [0, 1] of the images whose moments are given."""
    total = moments.sum(0).astype(np.float64)
    count = len(moments) * pixels_per_channel
    mean = total[:, 0] / count / 255
    std = np.sqrt(np.maximum(total[:, 1] / count / 255**2 - mean**2, 0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def synthetic_arrays(
    n_train: int = 4000, n_test: int = 1000, classes: int = 10, size: int = 32
) -> dict[str, np.ndarray]:
    """Deterministic, learnable data: each class is a fixed pattern under heavy noise."""
    rng = np.random.default_rng(1234)
    patterns = rng.normal(0, 1, (classes, 3, size, size))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % classes
        noisy = 128 + 5 * patterns[labels] + 60 * rng.normal(0, 1, (n, 3, size, size))
        return np.clip(noisy, 0, 255).astype(np.uint8), labels.astype(np.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _load_arrays(location: DataLocation) -> tuple[dict[str, np.ndarray], list[str], str]:
    if location.source == "synthetic":
        arrays = synthetic_arrays()
        arrays["train_moments"] = pixel_moments(arrays["train_x"])
        return arrays, [f"class{i}" for i in range(10)], _fingerprint(arrays)
    cache, root = location.cache, location.root
    if (cache / "meta.json").exists():
        try:
            meta = json.loads((cache / "meta.json").read_text())
            arrays = {name: np.load(cache / f"{name}.npy") for name in CACHED_NAMES}
            return arrays, meta["classes"], meta["fingerprint"]
        except (OSError, ValueError, KeyError, EOFError) as err:
            # Damaged (a crash before the disk had it, a truncated copy): decode again.
            logger.warning("the data cache %s is unreadable (%s); decoding again", cache, err)
            shutil.rmtree(cache, ignore_errors=True)
    # The first read of a dataset takes a while (it decodes every image): say so.
    count = f"{len(location.files)} images" if location.source == "imagefolder" else "CIFAR-10"
    logger.info("decoding %s in %s once; later runs read %s", count, root, cache)
    started = time.perf_counter()
    if location.source == "torchvision":
        arrays, classes = _decode_torchvision(root)
    else:
        arrays, classes = _decode_image_folder(root, location.files)
    fingerprint = _fingerprint(arrays)
    arrays["train_moments"] = pixel_moments(arrays["train_x"])
    _write_cache(cache, arrays, {"classes": classes, "fingerprint": fingerprint, "dir": str(root)})
    logger.info("decoded and cached in %.1f s", time.perf_counter() - started)
    return arrays, classes, fingerprint


def _detect(root: Path) -> str:
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-dir {root} is a file; point it at a folder")
    if root.name == "cifar-10-batches-py":
        raise DataError(f"--data-dir {root}: point it at the folder that holds cifar-10-batches-py")
    if (root / "cifar-10-batches-py").is_dir() or (root / "cifar-10-python.tar.gz").is_file():
        return "torchvision"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "imagefolder"
    if root.is_dir() and any(root.iterdir()):
        raise DataError(
            f"data dir {root} holds neither CIFAR-10's files (cifar-10-batches-py/ or "
            "cifar-10-python.tar.gz) nor an image-folder tree (train/<class>/*, test/<class>/*); "
            "point --data-dir at one of those, or at an empty folder to download CIFAR-10 there"
        )
    return "torchvision"  # empty or missing: torchvision downloads into it


def _torchvision_files(root: Path) -> list[Path]:
    batches = root / "cifar-10-batches-py"
    if batches.is_dir():
        return sorted(batches.iterdir())
    return [root / "cifar-10-python.tar.gz"] if (root / "cifar-10-python.tar.gz").exists() else []


def _decode_torchvision(root: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    from torchvision.datasets import CIFAR10

    present = bool(_torchvision_files(root))
    created = not root.exists()
    try:
        # torchvision checks the md5 of every file; download=True extracts a present tar.gz
        # and only reaches the network when the files are missing or corrupt.
        root.mkdir(parents=True, exist_ok=True)
        train = CIFAR10(str(root), train=True, download=True)
        test = CIFAR10(str(root), train=False, download=True)
    except Exception as err:  # noqa: BLE001 - any download or checksum failure means the same
        if created:
            shutil.rmtree(root, ignore_errors=True)  # leave no trace of a failed download
        problem = (
            "holds CIFAR-10 files that fail torchvision's checksum (corrupt or truncated?)"
            if present
            else "holds no CIFAR-10"
        )
        raise DataError(
            f"{root} {problem}, and downloading it failed ({type(err).__name__}: {err}). "
            f"Place cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) in "
            f"{root}, or point --data-dir at an image-folder tree DIR/train/<class>/*, "
            "DIR/test/<class>/*"
        ) from None
    arrays = {
        "train_x": np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)),
        "train_y": np.asarray(train.targets, dtype=np.int64),
        "test_x": np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)),
        "test_y": np.asarray(test.targets, dtype=np.int64),
    }
    return arrays, list(train.classes)


def _image_files(root: Path) -> list[str]:
    """Every image's path: strings, as a cached load only hashes them (60k Path objects are
    slow to build)."""
    train_classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if not train_classes:
        raise DataError(f"{root / 'train'} has no class folders; expected train/<class>/<image>")
    if train_classes != test_classes:
        raise DataError(
            f"class folders differ between {root / 'train'} ({', '.join(train_classes)}) and "
            f"{root / 'test'} ({', '.join(test_classes)}); both need the same classes"
        )
    files = []
    for split in ("train", "test"):
        for name in train_classes:
            # scandir, not Path.iterdir: several times faster on a folder of 60k files.
            with os.scandir(root / split / name) as entries:
                found = sorted(_check_file(e) for e in entries if _is_image(e.name))
            if not found:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise DataError(f"{root / split / name} holds no images ({suffixes})")
            files.extend(found)
    return files


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _check_file(entry: os.DirEntry) -> str:
    """The entry's path if it is a file; DataError naming it if not. (`is_file` needs no
    system call for a plain file: the listing's type says so.)"""
    try:
        if entry.is_file():
            return entry.path
        is_dir = entry.is_dir()
    except OSError:  # a symlink that loops
        is_dir = False
    if is_dir:
        problem = "is a folder named like an image"
    elif entry.is_symlink():
        problem = "is a broken symlink or a symlink loop"
    else:
        problem = "is not a regular file"
    raise DataError(f"{entry.path} {problem}; remove it or rename it")


def _decode_image_folder(
    root: Path, names: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], list[str]]:
    import torch

    files = [Path(name) for name in names]
    classes = sorted({f.parent.name for f in files})  # every class folder holds images
    index = {name: i for i, name in enumerate(classes)}
    images = _decode_files(files)
    first = images[0].shape
    odd = next((i for i, img in enumerate(images) if img.shape != first), None)
    if odd is not None:
        raise DataError(
            f"images in {root} have mixed sizes: {files[0]} is {first[2]}×{first[1]} but "
            f"{files[odd]} is {images[odd].shape[2]}×{images[odd].shape[1]}; "
            "resize them all to one size first"
        )
    stacked = torch.stack(images).numpy()
    labels = np.array([index[f.parent.name] for f in files], dtype=np.int64)
    is_train = np.array([f.parent.parent.name == "train" for f in files])
    arrays = {
        "train_x": np.ascontiguousarray(stacked[is_train]),
        "train_y": labels[is_train],
        "test_x": np.ascontiguousarray(stacked[~is_train]),
        "test_y": labels[~is_train],
    }
    return arrays, classes


def _read_bytes(path: Path) -> torch.Tensor:
    import torch

    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read image {path} ({err.strerror}); fix or remove it") from None
    if not data:
        raise DataError(f"image {path} is empty (0 bytes); replace or remove it")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_one(path: Path, encoded: torch.Tensor) -> torch.Tensor:
    """torchvision's decoders (JPEG, PNG, GIF, WebP), else Pillow's (BMP, TIFF, ...)."""
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(encoded, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        first = err
    try:
        with Image.open(io.BytesIO(encoded.numpy().tobytes())) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise DataError(
            f"cannot decode image {path} ({first}; Pillow: {err}); replace or remove it"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def _decode_files(files: list[Path]) -> list[torch.Tensor]:
    """Decode to RGB uint8 C×H×W tensors; JPEGs in one batched call, not one per file."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [_read_bytes(path) for path in files]
    jpeg = [i for i, path in enumerate(files) if path.suffix.lower() in (".jpg", ".jpeg")]
    images: list[torch.Tensor | None] = [None] * len(files)
    try:
        decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB) if jpeg else []
        for i, image in zip(jpeg, decoded, strict=True):
            images[i] = image
    except RuntimeError:
        pass  # a bad file spoils the batch: decode one by one below to name it
    for i, path in enumerate(files):
        if images[i] is None:
            images[i] = _decode_one(path, encoded[i])
    return images


def _cache_key(source: str, root: Path, files: list[str] | list[Path]) -> str:
    """Changes whenever a source file is added, removed, resized or touched."""
    digest = hashlib.blake2b(f"{CACHE_VERSION}|{source}|{root}".encode(), digest_size=12)
    skip = len(str(root))
    for path in map(str, files):
        try:
            stat = os.stat(path)
        except OSError as err:  # gone since the listing, or a symlink that loops
            message = f"cannot read image {path} ({err.strerror}); fix or remove it"
            raise DataError(message) from None
        if stat.st_size == 0:
            raise DataError(f"image {path} is empty (0 bytes); replace or remove it")
        digest.update(f"|{path[skip:]}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{source}-{digest.hexdigest()}"


def _fingerprint(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in ARRAY_NAMES:
        digest.update(np.ascontiguousarray(arrays[name]).data)
    return digest.hexdigest()


def _write_cache(cache: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write the cache beside its final name, then rename: a crash leaves no half cache."""
    partial = cache.with_name(f"{cache.name}.partial-{os.getpid()}-{time.monotonic_ns()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        for name, array in arrays.items():
            np.save(partial / f"{name}.npy", array)
        (partial / "meta.json").write_text(json.dumps(meta))
        for file in partial.iterdir():  # on disk before the rename makes them the cache
            fsync(file)
        try:
            partial.rename(cache)
        except OSError:  # another process cached the same data first: keep theirs
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as err:
        # A full disk or an unwritable cache only costs the next run a decode: leave no
        # partial files behind, say so and go on.
        shutil.rmtree(partial, ignore_errors=True)
        logger.warning(
            "cannot cache decoded data in %s (%s); set data.cache_dir", cache.parent, err
        )
