"""The committed configuration reference is what the models say today."""

from tests.conftest import REPO
from tuning.reference import comments, reference


def test_the_committed_reference_is_up_to_date():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == reference(), (
        "docs/configuration.md is out of date: run python -m tuning.reference > "
        "docs/configuration.md"
    )


def test_every_trial_setting_is_explained():
    from trainable.settings import TrialConfig

    found = comments(TrialConfig)
    assert set(found) == set(TrialConfig.model_fields)
    assert all(found.values()), [key for key, text in found.items() if not text]
