"""The committed configuration reference is what the models say today."""

import re

from tests.conftest import REPO
from tuning.config.reference import comments, reference


def test_the_committed_reference_is_up_to_date():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == reference(), (
        "docs/configuration.md is out of date: run python -m tuning.config.reference > "
        "docs/configuration.md"
    )


def test_every_trial_setting_is_explained():
    from trainable.settings import TrialConfig

    found = comments(TrialConfig)
    assert set(found) == set(TrialConfig.model_fields)
    assert all(found.values()), [key for key, text in found.items() if not text]


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a file's headings: lower case, punctuation gone, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_in_the_docs_resolves():
    pages = [REPO / "README.md", REPO / "benchmarks" / "README.md", REPO / "results" / "README.md"]
    pages += sorted((REPO / "docs").glob("*.md"))
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (anchor and anchor not in _anchors(file.read_text())):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 210
    first_screen = "\n".join(readme.splitlines()[:60])
    assert "pip install" in first_screen and "python -m pytest" in first_screen
