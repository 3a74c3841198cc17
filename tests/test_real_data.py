"""A real slice of CIFAR-10, when the shared archive is beside the repository."""

import tarfile
from pathlib import Path

import pytest
import torch

from trainable.data import DataConfig, load_dataset
from trainable.loop import Training
from trainable.settings import TrialConfig

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
PER_CLASS = {"train": 150, "test": 40}


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    if not ARCHIVE.exists():
        pytest.skip(f"{ARCHIVE} not present")
    root = tmp_path_factory.mktemp("cifar")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            parts = Path(member.name).parts  # cifar10/<split>/<class>/<file>
            if not member.isfile() or len(parts) != 4:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < PER_CLASS[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                tar.extract(member, root, filter="data")
    return root / "cifar10"


def test_real_cifar_slice_loads_and_trains(cifar_slice, tmp_path):
    data = load_dataset(DataConfig(dir=str(cifar_slice), val_size=200, cache_dir=str(tmp_path)))
    assert data.classes[:3] == ["airplane", "automobile", "bird"] and len(data.classes) == 10
    assert data.train_x.shape == (1300, 3, 32, 32) and data.test_x.shape == (400, 3, 32, 32)
    # CIFAR-10's published channel means are about 0.49, 0.48, 0.45.
    assert all(abs(m - e) < 0.05 for m, e in zip(data.mean, (0.49, 0.48, 0.45), strict=True))
    config = TrialConfig(epochs=4)
    training = Training(config, data, torch.device("cpu"))
    for _ in range(4):
        training.train_epoch()
    assert training.evaluate("test")["test_acc"] > 0.2  # chance is 0.1
