"""Device choice: CUDA only where Ray gave the trial a GPU and CUDA works; GPUs shared."""

import pytest
import torch

from trainable import trainable as trainable_module
from trainable.data import DataConfig, load_dataset
from trainable.loop import Training
from trainable.trainable import choose_device
from tuning.config import ExperimentConfig
from tuning.run import tuner as runner


@pytest.mark.parametrize(
    "gpu_ids, cuda_works, expected",
    [([0], True, "cuda"), ([], True, "cpu"), ([0], False, "cpu"), ([], False, "cpu")],
)
def test_a_trial_uses_cuda_only_with_a_gpu_from_ray_and_working_cuda(
    monkeypatch, gpu_ids, cuda_works, expected
):
    monkeypatch.setattr(trainable_module.ray, "get_gpu_ids", lambda: gpu_ids)
    monkeypatch.setattr(trainable_module.torch.cuda, "is_available", lambda: cuda_works)
    assert choose_device().type == expected


@pytest.mark.parametrize(
    "setting, cluster_gpus, cuda_works, expected",
    [
        ("auto", 1, True, 0.25),  # four trials share each GPU
        ("auto", 0, True, 0),
        ("auto", 1, False, 0),  # a GPU this torch cannot use
        (0.5, 1, True, 0.5),
        (0, 1, True, 0),
    ],
)
def test_gpus_per_trial(monkeypatch, setting, cluster_gpus, cuda_works, expected):
    config = ExperimentConfig.model_validate({"resources": {"gpus_per_trial": setting}})
    monkeypatch.setattr(runner.ray, "cluster_resources", lambda: {"CPU": 2, "GPU": cluster_gpus})
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: cuda_works)
    monkeypatch.setattr(runner, "trial_nodes", lambda: [{}])  # one node; no Ray needed
    assert runner.gpus_per_trial(config) == expected


@pytest.mark.gpu
def test_a_cuda_trial_keeps_its_data_on_the_gpu_and_learns():
    data = load_dataset(DataConfig(source="synthetic", train_subset=2000, val_size=500))
    config = ExperimentConfig.model_validate({"trial": {"hidden": 32}}).trial
    training = Training(config, data, torch.device("cuda"))
    assert all(t.is_cuda for t in (*training.data.train, *training.data.val, *training.data.test))
    for _ in range(3):
        metrics = training.train_epoch()
    assert metrics["train_acc"] > 0.5 and training.evaluate("val")["val_acc"] > 0.5
