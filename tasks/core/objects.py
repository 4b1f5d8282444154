"""Objects under the site's remote (site.remote, s3://bucket/prefix), with boto3's standard settings.

Uploads go through boto3's transfer manager with a SHA-256 checksum that S3 checks on arrival and
server-side encryption; an object appears whole or not at all (S3 has no partial object, and a
multipart upload that never completes is never listed). Every failure names the store and the setting.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tasks.core.errors import GenloopError

TIMEOUT_S = 30
ATTEMPTS = 5  # botocore's standard retry mode: throttling and connection errors, with backoff
ENCRYPTION = {"ServerSideEncryption": "AES256", "ChecksumAlgorithm": "SHA256"}


def split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


@functools.cache
def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=TIMEOUT_S,
        read_timeout=TIMEOUT_S,
        retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
        response_checksum_validation="when_supported",
    )
    return boto3.session.Session().client("s3", config=config)


def client():
    """An S3 client for the environment as it is now (one per endpoint in a process)."""
    import os

    return _client(os.environ.get("AWS_ENDPOINT_URL"))


def failed(url: str, err: Exception) -> GenloopError:
    """What went wrong with `url`, in one line naming site.remote."""
    code = getattr(err, "response", {}).get("Error", {}).get("Code") if hasattr(err, "response") else None
    reason = " ".join(str(err).split())
    reason = f"{code}: {reason}" if code else f"{type(err).__name__}: {reason}"
    return GenloopError(f"cannot use {url} (site.remote): {reason} (check AWS_ENDPOINT_URL and AWS_* keys)")


def _missing(err: Exception) -> bool:
    code = getattr(err, "response", {}).get("Error", {}).get("Code") if hasattr(err, "response") else None
    return code in ("404", "NoSuchKey", "NotFound")


def read(url: str) -> bytes | None:
    """The object's bytes, or None when there is none."""
    bucket, key = split(url)
    try:
        return client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as err:
        if _missing(err):
            return None
        raise failed(url, err) from None


def write(url: str, data: bytes) -> None:
    bucket, key = split(url)
    try:
        client().put_object(Bucket=bucket, Key=key, Body=data, **ENCRYPTION)
    except Exception as err:
        raise failed(url, err) from None


def upload(path: Path, url: str) -> None:
    """A file, through the transfer manager (multipart and concurrent for a large one)."""
    bucket, key = split(url)
    try:
        client().upload_file(str(path), bucket, key, ExtraArgs=dict(ENCRYPTION))
    except Exception as err:
        raise failed(url, err) from None


def download(url: str, path: Path) -> None:
    bucket, key = split(url)
    try:
        client().download_file(bucket, key, str(path))
    except Exception as err:
        raise failed(url, err) from None


def listing(url: str) -> list[str]:
    """The keys under `url` (a prefix), as s3:// URLs, across every page."""
    bucket, prefix = split(url.rstrip("/") + "/")
    try:
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [f"s3://{bucket}/{o['Key']}" for page in pages for o in page.get("Contents", [])]
    except Exception as err:
        if _missing(err) or "NoSuchBucket" in str(err):
            return []
        raise failed(url, err) from None
