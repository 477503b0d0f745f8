"""The README's configuration table matches the settings object."""

from __future__ import annotations

import re

from easel.shared.settings import Settings
from tests.support import ROOT


def test_readme_documents_every_setting_and_no_other() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(EASEL_[A-Z0-9_]+)` \|", table, flags=re.M))
    expected = {f"EASEL_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected
    mentioned = set(re.findall(r"EASEL_[A-Z0-9_]+", readme))
    client_variables = {"EASEL_API_URL", "EASEL_API_KEY"}  # read by the client and CLI, not the server
    assert mentioned <= expected | client_variables, mentioned - expected - client_variables


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
