"""Storage: a local folder, and S3 over HTTP (moto's server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from PIL import Image

from easel.shared.errors import StorageError
from easel.shared.settings import Settings
from easel.shared.storage import LocalStorage, S3Storage, storage_from_settings
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


@pytest.fixture
def s3_storage(s3: dict[str, str], tmp_path: Path) -> S3Storage:
    settings = Settings(
        home=tmp_path,
        storage_url=f"s3://{s3['bucket']}/unit",
        s3_endpoint_url=s3["endpoint"],
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    return storage


def test_s3_put_get_presigned(s3_storage: S3Storage, s3: dict[str, str]) -> None:
    s3_storage.check()
    s3_storage.put("jobs/b/0.png", b"\x89PNG data", "image/png")
    assert s3_storage.get("jobs/b/0.png") == b"\x89PNG data"
    url = s3_storage.presigned_url("jobs/b/0.png", 60)
    assert url and url.startswith(s3["endpoint"]) and "X-Amz-Signature" in url
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == b"\x89PNG data"
    assert response.headers["Content-Type"] == "image/png"
    key = s3_storage.client.list_objects_v2(Bucket=s3["bucket"], Prefix="unit/")["Contents"][0]
    assert key["Key"] == "unit/jobs/b/0.png"


def test_s3_unreachable_bucket_is_explained(s3: dict[str, str], tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, storage_url="s3://no-such-bucket-here", s3_endpoint_url=s3["endpoint"])
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' is unreachable"):
        storage_from_settings(settings).check()
    with pytest.raises(StorageError, match="cannot read s3://no-such-bucket-here/k"):
        storage_from_settings(settings).get("k")


def test_png_carries_its_parameters() -> None:
    data = encode_png(Image.new("RGB", (8, 8), "red"), {"seed": 5, "prompt": "red"})
    assert data.startswith(b"\x89PNG")
    assert read_parameters(data) == {"seed": 5, "prompt": "red"}
