import io
import subprocess
import sys
import typing

import pytest
import torch

from trainable.checkpoint import restore_training, training_state
from trainable.data import DataConfig, load_dataset
from trainable.families import build_model
from trainable.loop import Training
from trainable.settings import TrialConfig


def trial(**changes) -> TrialConfig:
    return TrialConfig(hidden=32, epochs=3, **changes)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(source="synthetic", val_size=500, train_subset=2000))


def test_mlp_is_the_original_network():
    model = build_model(TrialConfig(), (3, 32, 32), 10)
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
    training = Training(trial(optimizer=optimizer, lr=lr), data, torch.device("cpu"))
    before = training.evaluate("val")
    epochs = [training.train_epoch() for _ in range(3)]
    after = training.evaluate("val")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert after["val_loss"] < before["val_loss"]
    assert after["val_acc"] > 0.5  # chance is 0.1


@pytest.mark.parametrize("normalize", ["channel", "none"])
def test_normalisation(data, normalize):
    training = Training(trial(normalize=normalize), data, torch.device("cpu"))
    x = training.data.normalise(training.data.train[0])
    if normalize == "channel":  # the training split ends up with mean 0, std 1 per channel
        torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    else:
        torch.testing.assert_close(x, training.data.train[0].float() / 255)


def test_training_batches_are_normalised_into_one_buffer_with_the_same_values(data):
    training = Training(trial(normalize="channel"), data, torch.device("cpu"))
    batches = torch.randperm(len(training.data.train[1])).split(64)
    first, _ = training.data.training_batch(batches[0])
    assert torch.equal(first, training.data.normalise(training.data.train[0][batches[0]]))
    second, _ = training.data.training_batch(batches[1])
    assert torch.equal(second, training.data.normalise(training.data.train[0][batches[1]]))
    assert second.data_ptr() == first.data_ptr()  # the second batch overwrote the first
    last, _ = training.data.training_batch(batches[-1])  # a shorter batch: a buffer of its own
    assert len(last) == len(training.data.train[1]) % 64 > 0
    assert torch.equal(last, training.data.normalise(training.data.train[0][batches[-1]]))


def test_restored_state_continues_exactly(data):
    first = Training(trial(), data, torch.device("cpu"))
    first.train_epoch()
    saved = io.BytesIO()
    torch.save(training_state(first), saved)  # as the trainable checkpoints
    expected = first.train_epoch()

    torch.manual_seed(999)  # a restored trial must not depend on the process's RNG state
    second = Training(trial(seed=5), data, torch.device("cpu"))
    saved.seek(0)
    restore_training(second, torch.load(saved, weights_only=True))
    got = second.train_epoch()
    assert got["epoch"] == expected["epoch"] == 2
    assert got["train_loss"] == expected["train_loss"]


def test_a_gpu_trials_checkpoint_loads_on_a_cpu(data):
    """The driver judges a search's best checkpoint on its CPU, whatever device trained it: a
    CUDA generator's state (16 bytes, its seed and offset) must not stop the load."""
    config = trial(augment="crop_flip")
    trained = Training(config, data, torch.device("cpu"))
    trained.train_epoch()
    state = training_state(trained)
    state["augment_rng"] = torch.zeros(16, dtype=torch.uint8)  # as a CUDA generator saves it
    restored = Training(config, data, torch.device("cpu"))
    restore_training(restored, state)
    assert restored.epoch == 1
    assert restored.evaluate("test") == trained.evaluate("test")


# A fresh process: the test session itself may have imported torch._dynamo already.
TRIAL_WITHOUT_COMPILER = """
import sys, torch
from trainable.data import DataConfig, load_dataset
from trainable.checkpoint import restore_training, training_state
from trainable.loop import Training
from trainable.settings import TrialConfig
data = load_dataset(DataConfig(source="synthetic", val_size=100, train_subset=400))
for optimizer in ("adam", "adamw"):
    config = TrialConfig(hidden=16, optimizer=optimizer)
    training = Training(config, data, torch.device("cpu"))
    training.train_epoch()
    restore_training(Training(config, data, torch.device("cpu")), training_state(training))
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
    runs = [Training(trial(seed=s), data, cpu).train_epoch() for s in (1, 1, 2)]
    assert runs[0]["train_loss"] == runs[1]["train_loss"] != runs[2]["train_loss"]


def test_divergence_is_flagged(data):
    training = Training(trial(lr=1e6), data, torch.device("cpu"))
    with torch.no_grad():
        training.model[1].weight.fill_(float("nan"))
    assert training.train_epoch()["diverged"]


def test_cosine_schedule_runs_from_lr_to_zero(data):
    training = Training(trial(schedule="cosine", lr=0.01), data, torch.device("cpu"))
    lrs = []
    for progress in (0, 1.5, 3):
        training.set_lr(progress)
        lrs.append(training.optimizer.param_groups[0]["lr"])
    assert lrs[0] == 0.01 and lrs[1] == pytest.approx(0.005) and lrs[2] == pytest.approx(0)
    training.train_epoch()
    assert 0.0075 < training.optimizer.param_groups[0]["lr"] < 0.01  # stepped within the epoch


def test_constant_schedule_keeps_lr(data):
    training = Training(trial(lr=0.01), data, torch.device("cpu"))
    training.train_epoch()
    assert training.optimizer.param_groups[0]["lr"] == 0.01


def test_divergence_stops_the_epoch_early(data):
    config = trial(optimizer="sgd", lr=1e8, batch_size=10)
    training = Training(config, data, torch.device("cpu"))
    steps = []
    step = training.optimizer.step
    training.optimizer.step = lambda: steps.append(step())
    metrics = training.train_epoch()
    assert metrics["diverged"]
    assert len(steps) < len(data.train_y) // 10  # stopped well before the epoch's end


@pytest.mark.parametrize("split", ["val", "test"])
def test_flip_tta_scores_the_mean_of_an_image_and_its_mirror(data, split):
    import torch.nn.functional as F

    plain = Training(trial(augment="flip"), data, torch.device("cpu"))
    plain.train_epoch()
    mirrored = Training(trial(augment="flip", tta="flip"), data, torch.device("cpu"))
    mirrored.model.load_state_dict(plain.model.state_dict())
    images, labels = getattr(plain.data, split)
    with torch.inference_mode():
        probs = [
            F.softmax(plain.model(plain.data.normalise(x)), 1) for x in (images, images.flip(3))
        ]
        mean = (probs[0] + probs[1]) / 2
        single = F.cross_entropy(plain.model(plain.data.normalise(images)), labels)
    expected_acc = (mean.argmax(1) == labels).float().mean().item()
    expected_loss = F.nll_loss(mean.log(), labels).item()
    scored = mirrored.evaluate(split)
    assert scored[f"{split}_acc"] == pytest.approx(expected_acc)
    assert scored[f"{split}_loss"] == pytest.approx(expected_loss, rel=1e-5)
    # Without it, the plain cross-entropy of the image alone, as before.
    assert plain.evaluate(split)[f"{split}_loss"] == pytest.approx(single.item(), rel=1e-6)
    assert scored[f"{split}_loss"] != pytest.approx(single.item(), rel=1e-4)


def test_flip_translate_tta_scores_airbenchs_six_views(data):
    import torch.nn.functional as F

    from trainable.augment import translate
    from trainable.loop import TTA_VIEWS
    from trainable.settings import TestTimeAugment

    assert set(TTA_VIEWS) == set(typing.get_args(TestTimeAugment))
    plain = Training(trial(augment="crop_flip"), data, torch.device("cpu"))
    plain.train_epoch()
    views = Training(trial(augment="crop_flip", tta="flip_translate"), data, torch.device("cpu"))
    views.model.load_state_dict(plain.model.state_dict())
    images, labels = plain.data.val
    with torch.inference_mode():
        probs = lambda x: F.softmax(plain.model(plain.data.normalise(x)), 1)  # noqa: E731
        shifted = [translate(images, d, d) for d in (-1, 1)]
        mean = (probs(images) + probs(images.flip(3))) / 4 + sum(
            probs(x) + probs(x.flip(3)) for x in shifted
        ) / 8
    scored = views.evaluate("val")
    assert scored["val_acc"] == pytest.approx((mean.argmax(1) == labels).float().mean().item())
    assert scored["val_loss"] == pytest.approx(F.nll_loss(mean.log(), labels).item(), rel=1e-5)
    assert scored["val_loss"] != pytest.approx(plain.evaluate("val")["val_loss"], rel=1e-4)
