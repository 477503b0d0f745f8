"""Where images live: a local folder or an S3-compatible bucket, behind one interface."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

from easel.shared.errors import StorageError
from easel.shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef


class Storage(Protocol):
    """Put and fetch objects by key. Keys look like ``jobs/<id>/0.png``."""

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """A short-lived direct URL, or ``None`` if the app must serve the bytes."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects; one already gone is not an error (deleting is idempotent)."""
        ...

    def check(self) -> None:
        """Raise ``StorageError`` if the storage cannot be reached."""
        ...


class LocalStorage:
    """Objects as files under one folder; writes are atomic (temp file + rename); files are
    ``0600`` and folders ``0700`` (outputs are private to the service's user)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"key {key!r} escapes the storage folder")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # created 0600
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {key!r} under {str(self.root)!r}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc.strerror}") from exc

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        return None

    def delete(self, keys: Sequence[str]) -> None:
        folders = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot delete {key!r} under {str(self.root)!r}: {exc}") from exc
            folders.add(path.parent)
        for folder in folders:  # a job's folder goes with its last object
            with contextlib.suppress(OSError):
                if folder != self.root.resolve():
                    folder.rmdir()

    def check(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage folder {str(self.root)!r} is unusable: {exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage folder {str(self.root)!r} is not writable")


class S3Storage:
    """Objects in an S3-compatible bucket (AWS, MinIO, R2) under an optional prefix."""

    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        secret = settings.s3_secret_access_key
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                signature_version="s3v4",
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write s3://{self.bucket}/{self._key(key)}: {exc}") from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot read s3://{self.bucket}/{self._key(key)}: {exc}") from exc

    def delete(self, keys: Sequence[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = list(keys)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            chunk: list[ObjectIdentifierTypeDef] = [
                {"Key": self._key(key)} for key in keys[start : start + 1000]
            ]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}
                )
            except (BotoCoreError, ClientError) as exc:
                raise StorageError(f"cannot delete from s3://{self.bucket}: {exc}") from exc
            errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} "
                    f"{first.get('Message')} ({len(errors)} object(s) not deleted)"
                )

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_seconds,
        )

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"bucket {self.bucket!r} is unreachable: {exc}") from exc


def storage_from_settings(settings: Settings) -> Storage:
    """``file:///path`` gives ``LocalStorage``; ``s3://bucket/prefix`` gives ``S3Storage``."""
    url = urlparse(settings.storage_url)
    if url.scheme == "file":
        return LocalStorage(Path(unquote(url.path)))
    if url.scheme == "s3":
        if not url.netloc:
            raise ValueError(f"storage_url {settings.storage_url!r} names no bucket")
        return S3Storage(url.netloc, url.path, settings)
    raise ValueError(f"storage_url {settings.storage_url!r}: scheme must be file:// or s3://")
