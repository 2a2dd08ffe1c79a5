"""Job files in an S3-compatible object store (AWS S3, SeaweedFS, MinIO, R2 ...), through boto3.

Why it is safe without a shared disk: every write is one request that the server makes visible whole
(PutObject), or a multipart upload, which is invisible until CompleteMultipartUpload; a failed one is
aborted by boto3's transfer manager (``s3transfer`` registers ``abort_multipart_upload`` as a failure
cleanup as soon as the upload is created), so neither a half object nor its parts are left behind.
A process killed midway cannot abort; a bucket lifecycle rule (AbortIncompleteMultipartUpload after
a day) sweeps those parts.

Errors come out in the project's terms: a store with no room raises ``StorageFull`` (retried later),
a store that cannot be reached raises ``TransientError`` (code ``storage_unavailable``), a missing
object ``FileNotFoundError``, anything else an ``OSError`` naming the store and the key.
Credentials come only from the standard AWS chain (environment, profile, instance role).
"""

from __future__ import annotations

import mimetypes
import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import boto3
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                 HTTPClientError, NoCredentialsError, PartialCredentialsError)

from pipeline.errors import StorageFull, TransientError
from pipeline.storage import Storage

#: Error codes and HTTP status that S3 servers use for "no room" (AWS, MinIO, SeaweedFS, Ceph ...).
FULL_CODES = frozenset({"InsufficientStorage", "XMinioStorageFull", "QuotaExceeded", "StorageFull",
                        "XMinioAdminBucketQuotaExceeded"})
FULL_MESSAGES = ("no free volume", "no writable vol", "volume full", "volumes are full", "no space left",
                 "storage full")
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"})
BUSY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"})
CHUNK = 1 << 20
DELETE_BATCH = 1000  # the most keys one DeleteObjects request may name

_SESSIONS: dict[int, Any] = {}  # one boto3 session per process: it caches the service models (~0.1 s each)
_SESSIONS_LOCK = threading.Lock()  # a session's create_client is not thread-safe


def _new_client(**kwargs: Any):
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(os.getpid())
        if session is None:
            _SESSIONS.clear()  # a parent's session, inherited through fork, is never used here
            session = _SESSIONS[os.getpid()] = boto3.session.Session()
        return session.client("s3", **kwargs)


def split_key(key: str) -> list[str]:
    """The parts of a storage key, with the same rules as ``LocalStorage.path``: relative, no ``.``
    or ``..`` and no backslash, so a key never means something else on another backend."""
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") or "\\" in p for p in parts) or key.startswith("/"):
        raise ValueError(f"bad storage key {key!r}")
    return parts


def content_disposition(filename: str) -> str:
    """``attachment; filename="..."`` with an ASCII fallback, plus ``filename*`` for other names (RFC 6266)."""
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    value = f'attachment; filename="{plain}"'
    if plain != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


class S3Storage(Storage):
    """One bucket (and an optional key prefix inside it) of an S3-compatible server.

    The boto3 client is made on first use and again in a forked child (Celery prefork workers):
    a client is thread-safe but its pooled connections must not be shared across processes.
    """

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, addressing_style: str = "path",
                 multipart_threshold: int = 16 << 20, multipart_chunk: int = 16 << 20,
                 max_attempts: int = 5, connect_timeout: float = 5.0, read_timeout: float = 60.0):
        if not bucket:
            raise ValueError("an S3 store needs a bucket")
        self.bucket = bucket
        self.prefix = "/".join(split_key(prefix.strip("/"))) + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.where = f"{endpoint_url or 'AWS S3'} (bucket {bucket})"
        # s3v4: left alone, boto3 presigns SigV2 (Expires=...) for a custom endpoint; every server takes v4
        self.config = Config(signature_version="s3v4",
                             s3={"addressing_style": addressing_style},
                             retries={"max_attempts": max_attempts, "mode": "standard"},
                             connect_timeout=connect_timeout, read_timeout=read_timeout,
                             max_pool_connections=16)
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunk,
                                       max_concurrency=8)
        self._client: Any = None
        self._client_pid = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "S3Storage":
        s3 = settings.storage.s3
        return cls(s3.bucket, prefix=s3.prefix, endpoint_url=s3.endpoint_url, region=s3.region,
                   addressing_style=s3.addressing_style, multipart_threshold=s3.multipart_threshold_bytes,
                   multipart_chunk=s3.multipart_chunk_bytes)

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None or self._client_pid != os.getpid():
            with self._lock:
                if self._client is None or self._client_pid != os.getpid():
                    self._client = _new_client(endpoint_url=self.endpoint_url, region_name=self.region,
                                               config=self.config)
                    self._client_pid = os.getpid()
        return self._client

    def full_key(self, key: str) -> str:
        return self.prefix + "/".join(split_key(key))

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError, S3UploadFailedError, RetriesExceededError) as exc:
            raise self.translate(exc, what) from exc

    def translate(self, exc: BaseException, what: str) -> BaseException:
        """The project's exception for a boto3/botocore failure while doing ``what``."""
        if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
            exc = exc.__context__  # boto3 wraps the ClientError of an upload in a message-only error
        if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
            exc = exc.last_exception
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            return TransientError(f"the object store at {self.where} cannot be reached ({exc}); {what} is retried",
                                  code="storage_unavailable")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return PermissionError(f"no usable AWS credentials for {self.where} ({exc}); set AWS_ACCESS_KEY_ID "
                                   "and AWS_SECRET_ACCESS_KEY, a profile or an instance role")
        if not isinstance(exc, ClientError):
            return OSError(f"{what} failed on {self.where}: {exc}")
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in FULL_CODES or status == 507 or any(m in message.lower() for m in FULL_MESSAGES):
            return StorageFull(f"the object store at {self.where} has no room for {what} ({code}: {message}); "
                               "free space or raise its quota, the job is retried", details={"s3_code": code})
        if code in MISSING_CODES or status == 404 and code != "NoSuchBucket":
            return FileNotFoundError(f"{what}: no such object in {self.where}")
        if code in DENIED_CODES:
            return PermissionError(f"{what} refused by {self.where} ({code}: {message}); check the credentials")
        if status >= 500 or code in BUSY_CODES:
            return TransientError(f"the object store at {self.where} failed {what} ({status} {code}: {message}); "
                                  "it is retried", code="storage_unavailable")
        return OSError(f"{what} failed on {self.where} ({status} {code}: {message})")

    # -- the Storage interface --------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        full = self.full_key(key)
        extra = {"ContentType": content_type} if content_type else {}
        self._call(f"writing {key}", self.client.put_object, Bucket=self.bucket, Key=full, Body=data, **extra)

    def put_file(self, key: str, path: Path, content_type: str | None = None, *,
                 progress: Callable[[int], None] | None = None) -> None:
        """Upload ``path`` (one PutObject, or a multipart upload above the threshold), then remove it.

        ``progress`` is called with each chunk's byte count as it is sent; if it raises, the upload
        stops, its parts are aborted and the exception comes out unchanged. On any failure ``path`` is
        left where it was (the caller's temp folder cleans it up)."""
        full = self.full_key(key)
        content_type = content_type or mimetypes.guess_type(Path(path).name)[0]
        extra = {"ContentType": content_type} if content_type else None
        self._call(f"uploading {key}", self.client.upload_file, str(path), self.bucket, full, ExtraArgs=extra,
                   Config=self.transfer, Callback=progress)
        Path(path).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        full = self.full_key(key)
        response = self._call(f"reading {key}", self.client.get_object, Bucket=self.bucket, Key=full)
        with response["Body"] as body:
            return self._call(f"reading {key}", body.read)

    def readable_path(self, key: str, scratch: Path) -> Path:
        """Download into a new folder of ``scratch``, keeping the key's file name (tools go by the
        suffix: .mp4, .npy); boto3 writes a temp name and renames it when the download is complete."""
        full = self.full_key(key)
        Path(scratch).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="s3-", dir=scratch))
        target = folder / full.rsplit("/", 1)[-1]
        try:
            self._call(f"downloading {key}", self.client.download_file, self.bucket, full, str(target),
                       Config=self.transfer)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return target

    def _head(self, key: str) -> dict[str, Any] | None:
        full = self.full_key(key)
        try:
            return self._call(f"looking up {key}", self.client.head_object, Bucket=self.bucket, Key=full)
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def delete(self, key: str) -> None:
        full = self.full_key(key)
        self._call(f"deleting {key}", self.client.delete_object, Bucket=self.bucket, Key=full)

    def _list_full(self, prefix: str) -> list[str]:
        folder = self.full_key(prefix) + "/"
        keys: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
        for page in self._call(f"listing {prefix}/", list, pages):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix/``; the listing is read whole first, so deleting never
        races the paging of the listing it came from."""
        keys = self._list_full(prefix)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start:start + DELETE_BATCH]]
            reply = self._call(f"deleting {prefix}/", self.client.delete_objects, Bucket=self.bucket,
                               Delete={"Objects": batch, "Quiet": True})
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise OSError(f"deleting {prefix}/ on {self.where}: {len(reply['Errors'])} objects not deleted "
                              f"({first.get('Key')}: {first.get('Code')} {first.get('Message')})")
        return len(keys)

    def list_prefix(self, prefix: str) -> list[str]:
        return sorted(k[len(self.prefix):] for k in self._list_full(prefix))

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def presigned_url(self, key: str, ttl_s: int, *, filename: str | None = None,
                      content_type: str | None = None) -> str | None:
        """A SigV4 GET URL valid ``ttl_s`` seconds; the server then answers with ``filename`` as an
        attachment and ``content_type``, and honours Range (made locally: no request is sent)."""
        params = {"Bucket": self.bucket, "Key": self.full_key(key)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        if content_type:
            params["ResponseContentType"] = content_type
        return self._call(f"presigning {key}", self.client.generate_presigned_url, "get_object", Params=params,
                          ExpiresIn=int(ttl_s))

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start``..``end`` (inclusive) in chunks. The request is sent now, so a missing object
        raises ``FileNotFoundError`` here rather than midway through an HTTP answer; a start past the
        end yields nothing, as a local file does."""
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad byte range {start}-{end}")
        full = self.full_key(key)
        wanted = f"bytes={start}-{'' if end is None else end}"
        try:
            response = self._call(f"reading {key}", self.client.get_object, Bucket=self.bucket, Key=full,
                                  Range=wanted)
        except OSError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") == "InvalidRange":
                return iter(())
            raise
        return self._chunks(key, response["Body"])

    def _chunks(self, key: str, body) -> Iterator[bytes]:
        try:
            while True:
                chunk = self._call(f"reading {key}", body.read, CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def check(self) -> None:
        """The bucket answers and takes a write: HeadBucket, then a probe object put and deleted."""
        probe = f".probe-{secrets.token_hex(6)}"
        try:
            try:
                self._call("checking the bucket", self.client.head_bucket, Bucket=self.bucket)
            except FileNotFoundError:
                raise OSError(f"bucket {self.bucket!r} does not exist (create it first)") from None
            self.put_bytes(probe, b"probe")
            self.delete(probe)
        except (OSError, TransientError) as exc:
            raise OSError(f"the object store at {self.where} is not usable: {exc}") from exc
