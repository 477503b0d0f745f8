"""Offline means offline: EASEL_OFFLINE takes effect before huggingface_hub is imported,
so no Easel process asks a hub (docs/bring-your-models.md, "Offline")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from easel.offline import HUB_SWITCHES, apply_offline, offline_requested
from tests.hub_recorder import hub_recorder

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("value", "offline"),
    [
        (None, True),
        ("true", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("Off", False),
    ],
)
def test_easel_offline_is_read_as_settings_read_it(value: str | None, offline: bool) -> None:
    from easel.shared.settings import Settings

    environ = {} if value is None else {"EASEL_OFFLINE": value}
    assert offline_requested(environ) is offline
    assert Settings(_env_file=None, **({} if value is None else {"offline": value})).offline is offline  # type: ignore[call-arg]


def test_apply_offline_sets_every_switch_and_tells_an_imported_hub() -> None:
    import huggingface_hub.constants as constants

    environ: dict[str, str] = {}
    before = constants.HF_HUB_OFFLINE
    try:
        constants.HF_HUB_OFFLINE = False
        assert apply_offline(environ) is True
        assert all(environ[name] == "1" for name in HUB_SWITCHES)
        assert constants.HF_HUB_OFFLINE is True
    finally:
        constants.HF_HUB_OFFLINE = before
    assert apply_offline({"EASEL_OFFLINE": "false"}) is False


# A worker loading a Hub id it does not have: with the switch applied too late (as it
# was), huggingface_hub had already read HF_HUB_OFFLINE and asked the Hub.
_LOAD_UNCACHED = """
from easel.shared.registry import ModelSource, ModelSpec
from easel.worker.engine.device import detect
from easel.worker.engine.pipelines import load_pipeline
spec = ModelSpec(name="m", source=ModelSource.HUGGINGFACE, location="org/not-cached", family="sd")
try:
    load_pipeline(spec, detect("cpu"), offline={offline})
except Exception as exc:
    print(type(exc).__name__)
"""


def _load_uncached(tmp_path: Path, easel_offline: str | None) -> list[str]:
    with hub_recorder() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EASEL_", "HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), NO_PROXY="127.0.0.1")
        if easel_offline is not None:
            env["EASEL_OFFLINE"] = easel_offline
        offline = easel_offline != "false"
        script = _LOAD_UNCACHED.format(offline=offline)
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert "ModelLoadError" in done.stdout, done.stdout + done.stderr
        return list(hub.requests)


def test_an_offline_worker_never_asks_the_hub(tmp_path: Path) -> None:
    assert _load_uncached(tmp_path, None) == []


def test_the_stand_in_hub_sees_an_online_worker(tmp_path: Path) -> None:
    """The check above can fail: the same load with EASEL_OFFLINE=false reaches the stand-in."""
    assert _load_uncached(tmp_path, "false") != []
