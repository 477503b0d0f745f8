"""Storage in a local folder (S3 over HTTP: ``tests/integration/test_s3_storage.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from easel.shared.errors import StorageError
from easel.shared.settings import Settings
from easel.shared.storage import LocalStorage, storage_from_settings
from easel.worker.pngmeta import encode_png, read_parameters


def test_local_put_get_and_no_presigned_url(tmp_path: Path) -> None:
    storage = storage_from_settings(Settings(home=tmp_path))
    assert isinstance(storage, LocalStorage)
    storage.check()
    storage.put("jobs/a/0.png", b"one", "image/png")
    storage.put("jobs/a/0.png", b"two", "image/png")  # overwrite, never duplicate
    assert storage.get("jobs/a/0.png") == b"two"
    assert storage.presigned_url("jobs/a/0.png", 60) is None
    assert [p.name for p in (tmp_path / "outputs" / "jobs" / "a").iterdir()] == ["0.png"]


def test_local_rejects_keys_that_escape(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "outputs")
    with pytest.raises(StorageError, match="escapes"):
        storage.put("../evil", b"x", "text/plain")


def test_local_missing_key(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot read 'nope'"):
        LocalStorage(tmp_path).get("nope")


def test_unknown_scheme_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'ftp://x'"):
        storage_from_settings(Settings(home=tmp_path, storage_url="ftp://x"))


def test_png_carries_its_parameters() -> None:
    data = encode_png(Image.new("RGB", (8, 8), "red"), {"seed": 5, "prompt": "red"})
    assert data.startswith(b"\x89PNG")
    assert read_parameters(data) == {"seed": 5, "prompt": "red"}
