"""Collect from s3://bucket/prefix with boto3's standard configuration (AWS_ENDPOINT_URL, AWS_* keys).

Paginated listing, concurrent downloads, retries with exponential backoff, and every object checked
against its size, its ETag (when it is a plain MD5) and its S3 checksum (validated by botocore).

One retry layer per object: botocore does not retry a GET (its own retries would multiply ours), and
each object has a deadline of `retries` x `timeout_s` in all. An object that cannot be read fails after
at most (retries + 1) x timeout_s: the deadline, plus one socket read that was waiting when it passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tasks.core.errors import GenloopError
from tasks.core.params import CollectParams
from tasks.ingest.sources import SUFFIXES, Entry, put


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix


def client(params: CollectParams, retry: bool = True):  # -> botocore S3 client
    """The listing client retries its requests itself (botocore's standard mode); `retry=False` is for
    GETs, which _get_verified retries against a deadline."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=params.timeout_s,
        read_timeout=params.timeout_s,
        retries={"total_max_attempts": params.retries if retry else 1, "mode": "standard"},
        max_pool_connections=max(10, params.workers),
        response_checksum_validation="when_supported",
    )
    return boto3.session.Session().client("s3", config=config)  # fresh: reads the environment now


def _explain(err: Exception, uri: str) -> GenloopError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(err, EndpointConnectionError):
        return GenloopError(f"cannot reach the S3 endpoint for {uri}: {err} (check AWS_ENDPOINT_URL)")
    if isinstance(err, NoCredentialsError):
        return GenloopError(f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "?")
        return GenloopError(f"S3 refused {uri}: {code}: {err.response.get('Error', {}).get('Message', err)}")
    return GenloopError(f"S3 error on {uri}: {type(err).__name__}: {err}")


def list_objects(s3, bucket: str, prefix: str) -> list[dict]:
    """Every .png/.txt object under the prefix, across all result pages, in key order."""
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if Path(obj["Key"]).suffix.lower() in SUFFIXES:
                objects.append(obj)
    return sorted(objects, key=lambda o: o["Key"])


def list_names(uri: str, params: CollectParams) -> list[str]:
    """The keys of the .png/.txt objects under s3://bucket/prefix (a listing, nothing downloaded)."""
    bucket, prefix = split_uri(uri)
    try:
        return [o["Key"] for o in list_objects(client(params), bucket, prefix)]
    except Exception as err:
        raise _explain(err, uri) from None


class Corrupt(OSError):
    """An object whose bytes do not match its listing (size) or its ETag (MD5): a damaged transfer."""


class Overdue(TimeoutError):
    """The object's deadline (collect.retries x collect.timeout_s) passed while it was read."""


def read_again(err: Exception) -> bool:
    """Worth reading the object again: its transfer broke off, timed out or arrived damaged, the
    endpoint could not be reached, or S3 answered "busy" (throttling, 5xx). A refusal (access denied,
    no such key) or a bug here fails at once."""
    from botocore.exceptions import (
        ChecksumError,
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        FlexibleChecksumError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = err.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout")
    broken = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError)
    damaged = (Corrupt, ChecksumError, FlexibleChecksumError)
    unreachable = (EndpointConnectionError, ConnectionError, TimeoutError)
    return isinstance(err, (*broken, *damaged, *unreachable)) and not isinstance(err, Overdue)


def _read_by(body, deadline: float) -> bytes:
    """The whole streaming body. At the deadline its connection is shut, which ends a read still
    waiting: a body that trickles in a byte at a time never times out by itself."""
    import socket
    import threading

    cut = threading.Event()

    def shut() -> None:
        cut.set()
        sock = _socket_of(body)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), shut)
    timer.daemon = True
    timer.start()
    try:
        data = body.read()
    except Exception:
        if cut.is_set():
            raise Overdue("still arriving at the deadline") from None
        raise
    finally:
        timer.cancel()
    if cut.is_set():
        raise Overdue("still arriving at the deadline")
    return data


def _socket_of(body):  # botocore StreamingBody -> urllib3 response -> http.client response -> socket
    raw = getattr(body, "_raw_stream", None)
    conn = getattr(raw, "connection", None)
    if getattr(conn, "sock", None) is not None:
        return conn.sock
    return getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None)


def _get_verified(s3, bucket: str, obj: dict, retries: int, timeout_s: float) -> bytes:
    """Download one object, reading it again (with backoff) until its size and checksums agree, at
    most `retries` times and until `retries` x `timeout_s` have passed."""
    etag = obj["ETag"].strip('"')
    deadline = time.monotonic() + retries * timeout_s
    last: Exception | None = None
    attempts = 0
    while attempts < retries:
        attempts += 1
        try:
            response = s3.get_object(Bucket=bucket, Key=obj["Key"], ChecksumMode="ENABLED")
            body = _read_by(response["Body"], deadline)
            if len(body) != obj["Size"]:
                raise Corrupt(f"size {len(body)} != listed {obj['Size']}")
            # A multipart ETag ("...-N") is not an MD5 of the body; botocore's checksum check covers those.
            if "-" not in etag and hashlib.md5(body, usedforsecurity=False).hexdigest() != etag:
                raise Corrupt("MD5 does not match the ETag")
            return body
        except Exception as err:
            if not (read_again(err) or isinstance(err, Overdue)):
                raise
            last = err
            nap = min(0.5 * 2 ** (attempts - 1), 8.0)
            if attempts >= retries or isinstance(err, Overdue) or time.monotonic() + nap >= deadline:
                break
            time.sleep(nap)
    raise GenloopError(
        f"s3://{bucket}/{obj['Key']} failed {attempts} time(s) in {retries * timeout_s:g} s "
        f"(collect.retries x collect.timeout_s): {type(last).__name__}: {last}"
    )


def download_prefix(uri: str, dest: Path, params: CollectParams) -> list[Entry]:
    from tqdm import tqdm

    bucket, prefix = split_uri(uri)
    s3, gets = client(params), client(params, retry=False)
    try:
        objects = list_objects(s3, bucket, prefix)
    except Exception as err:
        raise _explain(err, uri) from None
    base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
    entries: list[Entry] = []
    with (
        ThreadPoolExecutor(max_workers=params.workers) as pool,
        tqdm(total=sum(o["Size"] for o in objects), unit="B", unit_scale=True, desc=f"collect {uri}") as bar,
    ):
        futures = {
            pool.submit(_get_verified, gets, bucket, o, params.retries, params.timeout_s): o for o in objects
        }
        for fut in as_completed(futures):
            obj = futures[fut]
            try:
                body = fut.result()
            except Exception as err:
                pool.shutdown(wait=False, cancel_futures=True)  # fail fast, don't fetch the rest
                if isinstance(err, GenloopError):
                    raise
                raise _explain(err, f"s3://{bucket}/{obj['Key']}") from None
            rel = (
                obj["Key"][len(base) :]
                if obj["Key"].startswith(base)
                else obj["Key"][len(prefix) :].lstrip("/")
            )
            entries.append(put(dest, rel, body, f"s3://{bucket}/{obj['Key']}"))
            bar.update(obj["Size"])
    return sorted(entries, key=lambda e: e.path)
