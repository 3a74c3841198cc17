import io
import subprocess
import sys

import pytest
import torch

from trainable.data import DataSpec, load_dataset
from trainable.loop import Training, make_optimizer
from trainable.models import build_model
from tuning.config import TrialConfig

CONFIG = TrialConfig(hidden=32, epochs=3).model_dump()


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataSpec(source="synthetic", val_size=500, train_subset=2000))


def test_mlp_is_the_original_network():
    model = build_model({"model": "mlp", "hidden": 128}, (3, 32, 32), 10)
    layers = [type(m).__name__ for m in model]
    assert layers == ["Flatten", "InputMajorLinear", "ReLU", "InputMajorLinear"]
    assert (model[1].in_features, model[1].out_features, model[3].out_features) == (3072, 128, 10)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "1.weight": (128, 3072),
        "1.bias": (128,),
        "3.weight": (10, 128),
        "3.bias": (10,),
    }
    out = model(torch.zeros(5, 3, 32, 32))
    assert out.shape == (5, 10)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_the_loop_learns(data, optimizer):
    lr = 0.01 if optimizer == "sgd" else 1e-3
    training = Training({**CONFIG, "optimizer": optimizer, "lr": lr}, data, torch.device("cpu"))
    before = training.evaluate("val")
    epochs = [training.train_epoch() for _ in range(3)]
    after = training.evaluate("val")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert after["val_loss"] < before["val_loss"]
    assert after["val_acc"] > 0.5  # chance is 0.1


@pytest.mark.parametrize("normalize", ["channel", "none"])
def test_normalisation(data, normalize):
    training = Training({**CONFIG, "normalize": normalize}, data, torch.device("cpu"))
    x = training.normalise(training.train[0])
    if normalize == "channel":  # the training split ends up with mean 0, std 1 per channel
        torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    else:
        torch.testing.assert_close(x, training.train[0].float() / 255)


def test_training_batches_are_normalised_into_one_buffer_with_the_same_values(data):
    training = Training({**CONFIG, "normalize": "channel"}, data, torch.device("cpu"))
    batches = torch.randperm(len(training.train[1])).split(64)
    first, _ = training.training_batch(batches[0])
    assert torch.equal(first, training.normalise(training.train[0][batches[0]]))
    second, _ = training.training_batch(batches[1])
    assert torch.equal(second, training.normalise(training.train[0][batches[1]]))
    assert second.data_ptr() == first.data_ptr()  # the second batch overwrote the first
    last, _ = training.training_batch(batches[-1])  # a shorter batch: a buffer of its own
    assert len(last) == len(training.train[1]) % 64 > 0
    assert torch.equal(last, training.normalise(training.train[0][batches[-1]]))


def test_restored_state_continues_exactly(data):
    first = Training(CONFIG, data, torch.device("cpu"))
    first.train_epoch()
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # as the trainable checkpoints
    expected = first.train_epoch()

    torch.manual_seed(999)  # a restored trial must not depend on the process's RNG state
    second = Training({**CONFIG, "seed": 5}, data, torch.device("cpu"))
    saved.seek(0)
    second.load_state_dict(torch.load(saved, weights_only=True))
    got = second.train_epoch()
    assert got["epoch"] == expected["epoch"] == 2
    assert got["train_loss"] == expected["train_loss"]


def test_a_gpu_trials_checkpoint_loads_on_a_cpu(data):
    """The driver judges a search's best checkpoint on its CPU, whatever device trained it: a
    CUDA generator's state (16 bytes, its seed and offset) must not stop the load."""
    config = {**CONFIG, "augment": "crop_flip"}
    trained = Training(config, data, torch.device("cpu"))
    trained.train_epoch()
    state = trained.state_dict()
    state["augment_rng"] = torch.zeros(16, dtype=torch.uint8)  # as a CUDA generator saves it
    restored = Training(config, data, torch.device("cpu"))
    restored.load_state_dict(state)
    assert restored.epoch == 1
    assert restored.evaluate("test") == trained.evaluate("test")


# A fresh process: the test session itself may have imported torch._dynamo already.
TRIAL_WITHOUT_COMPILER = """
import sys, torch
from trainable.data import DataSpec, load_dataset
from trainable.loop import Training
from tuning.config import TrialConfig
data = load_dataset(DataSpec(source="synthetic", val_size=100, train_subset=400))
for optimizer in ("adam", "adamw"):
    config = TrialConfig(hidden=16, optimizer=optimizer).model_dump()
    training = Training(config, data, torch.device("cpu"))
    training.train_epoch()
    Training(config, data, torch.device("cpu")).load_state_dict(training.state_dict())
print("torch._dynamo" in sys.modules)
"""


def test_an_mlp_trial_trains_and_checkpoints_without_importing_the_compiler():
    # torch._dynamo's import costs a trial process 1.1 s and 150 MB (trainable/eager.py).
    out = subprocess.run(
        [sys.executable, "-c", TRIAL_WITHOUT_COMPILER], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False"]


def test_same_seed_same_run_other_seed_other_run(data):
    cpu = torch.device("cpu")
    runs = [Training({**CONFIG, "seed": s}, data, cpu).train_epoch() for s in (1, 1, 2)]
    assert runs[0]["train_loss"] == runs[1]["train_loss"] != runs[2]["train_loss"]


def test_divergence_is_flagged(data):
    training = Training({**CONFIG, "lr": 1e6}, data, torch.device("cpu"))
    with torch.no_grad():
        training.model[1].weight.fill_(float("nan"))
    assert training.train_epoch()["diverged"]


def test_cosine_schedule_runs_from_lr_to_zero(data):
    training = Training({**CONFIG, "schedule": "cosine", "lr": 0.01}, data, torch.device("cpu"))
    lrs = []
    for progress in (0, 1.5, 3):
        training.set_lr(progress)
        lrs.append(training.optimizer.param_groups[0]["lr"])
    assert lrs[0] == 0.01 and lrs[1] == pytest.approx(0.005) and lrs[2] == pytest.approx(0)
    training.train_epoch()
    assert 0.0075 < training.optimizer.param_groups[0]["lr"] < 0.01  # stepped within the epoch


def test_constant_schedule_keeps_lr(data):
    training = Training({**CONFIG, "lr": 0.01}, data, torch.device("cpu"))
    training.train_epoch()
    assert training.optimizer.param_groups[0]["lr"] == 0.01


def test_divergence_stops_the_epoch_early(data):
    config = {**CONFIG, "optimizer": "sgd", "lr": 1e8, "batch_size": 10}
    training = Training(config, data, torch.device("cpu"))
    steps = []
    step = training.optimizer.step
    training.optimizer.step = lambda: steps.append(step())
    metrics = training.train_epoch()
    assert metrics["diverged"]
    assert len(steps) < len(data.train_y) // 10  # stopped well before the epoch's end


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_checkpoint_from_nn_linear_layers_continues_as_it_would_have(data, optimizer):
    # Saved before the MLP's layers held their weights input-major: the optimiser's moments
    # are shaped like nn.Linear's weights, and the checkpoint has no format field.
    config = {**CONFIG, "optimizer": optimizer}
    new = Training(config, data, torch.device("cpu"))
    shape = data.train_x.shape[1:]
    features = shape[0] * shape[1] * shape[2]
    old = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(features, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    old.load_state_dict(new.model.state_dict())
    old_optimizer = make_optimizer(config, old.parameters())
    for _ in range(3):
        for param in old.parameters():
            param.grad = torch.randn_like(param)
        old_optimizer.step()
    saved = new.state_dict()
    del saved["format"]
    saved = {**saved, "model": old.state_dict(), "optimizer": old_optimizer.state_dict()}
    file = io.BytesIO()
    torch.save(saved, file)  # as the trainable checkpoints; a copy, not the old tensors
    file.seek(0)

    resumed = Training(config, data, torch.device("cpu"))
    resumed.load_state_dict(torch.load(file, weights_only=True))
    # One more step on the same gradients: the same weights as the old layers would reach.
    for param in old.parameters():
        param.grad = torch.randn_like(param)
    for group in old_optimizer.param_groups:
        group["lr"] = resumed.optimizer.param_groups[0]["lr"]
    old_optimizer.step()
    for layer, old_layer in ((resumed.model[1], old[1]), (resumed.model[3], old[3])):
        layer.weight_t.grad.copy_(old_layer.weight.grad.t())
        layer.bias.grad.copy_(old_layer.bias.grad)
    resumed.mlp_step.update()
    for layer, old_layer in ((resumed.model[1], old[1]), (resumed.model[3], old[3])):
        assert torch.equal(layer.weight, old_layer.weight)
        assert torch.equal(layer.bias, old_layer.bias)
    trained = resumed.train_epoch()  # and the loop runs on the loaded state
    assert trained["epoch"] == 1 and not trained["diverged"]
