"""Storage on S3 over HTTP (moto's server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from easel.shared.errors import StorageError
from easel.shared.settings import Settings
from easel.shared.storage import S3Storage, storage_from_settings


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
