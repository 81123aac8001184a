"""The README is a short user's guide whose links land: every relative link names a file that exists."""

from __future__ import annotations

import re

from tests.conftest import REPO

README = REPO / "README.md"


def test_readme_is_a_short_guide() -> None:
    assert len(README.read_text().splitlines()) <= 300


def test_every_relative_link_of_the_readme_exists() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert local, "the README links to its docs"
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
