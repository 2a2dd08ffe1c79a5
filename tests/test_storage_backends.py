"""One contract for every job store: a local folder and a real S3 server (SeaweedFS, see tests/s3_server.py).

The S3 side runs against the real server, never a mock: multipart uploads, aborted uploads, presigned
URLs fetched over HTTP, an endpoint with nothing behind it.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from boto3.exceptions import S3UploadFailedError

from pipeline.errors import StorageFull, TransientError
from pipeline.s3 import S3Storage, content_disposition
from pipeline.storage import LocalStorage, open_storage
from tests.deadlines import scaled
from tests.s3_server import free_ports

MIB = 1 << 20


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    settings = server.settings(tmp_path, s3={"prefix": "/alive/", "multipart_threshold_bytes": 5 * MIB,
                                             "multipart_chunk_bytes": 5 * MIB})
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage) and storage.prefix == "alive/"
    storage.test_client = server.client()  # to look behind the store's back (multipart uploads, ETags)
    return storage


def _s3_only(store):
    if not isinstance(store, S3Storage):
        pytest.skip("object store only")


def test_put_get_exists_size_delete(store):
    key = "jobs/j1/poster.jpg"
    assert not store.exists(key) and store.size(key) is None
    with pytest.raises(FileNotFoundError):
        store.get_bytes(key)
    store.put_bytes(key, b"first", content_type="image/jpeg")
    assert store.exists(key) and store.size(key) == 5 and store.get_bytes(key) == b"first"
    store.put_bytes(key, b"second version")  # replaced whole
    assert store.get_bytes(key) == b"second version" and store.size(key) == 14
    store.put_bytes("jobs/j1/empty", b"")
    assert store.exists("jobs/j1/empty") and store.size("jobs/j1/empty") == 0
    assert store.get_bytes("jobs/j1/empty") == b""
    store.delete(key)
    assert not store.exists(key) and store.size(key) is None
    store.delete(key)  # deleting what is gone is fine
    store.check()


def test_put_file_moves_the_temp_away(store, tmp_path):
    temp = tmp_path / "work" / "story.mp4"
    temp.parent.mkdir()
    temp.write_bytes(b"video bytes")
    store.put_file("jobs/j2/story.mp4", temp, content_type="video/mp4")
    assert not temp.exists()
    assert store.get_bytes("jobs/j2/story.mp4") == b"video bytes"


def test_large_file_goes_multipart_and_round_trips(store, tmp_path):
    data = os.urandom(12 * MIB + 12345)
    temp = tmp_path / "frames.npy"
    temp.write_bytes(data)
    store.put_file("jobs/j3/frames.npy", temp)
    assert not temp.exists() and store.size("jobs/j3/frames.npy") == len(data)
    local = store.readable_path("jobs/j3/frames.npy", tmp_path / "scratch")
    assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert b"".join(store.open_range("jobs/j3/frames.npy")) == data
    if isinstance(store, S3Storage):  # a multipart object's ETag is "<md5 of part md5s>-<parts>"
        head = store.test_client.head_object(Bucket=store.bucket, Key=store.full_key("jobs/j3/frames.npy"))
        assert head["ETag"].strip('"').endswith("-3"), head["ETag"]


def test_failed_multipart_upload_leaves_no_object_and_no_parts(store, tmp_path):
    _s3_only(store)
    client, key = store.test_client, "jobs/j4/frames.npy"
    # the check below can fail: an upload in progress is listed
    started = client.create_multipart_upload(Bucket=store.bucket, Key=store.full_key("jobs/other"))
    assert [u["Key"] for u in client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])] \
        == [store.full_key("jobs/other")]
    client.abort_multipart_upload(Bucket=store.bucket, Key=store.full_key("jobs/other"), UploadId=started["UploadId"])

    store.put_bytes(key, b"the old version")
    temp = tmp_path / "frames.npy"
    temp.write_bytes(os.urandom(12 * MIB))
    sent = []

    class Interrupted(Exception):
        pass

    def progress(n):
        sent.append(n)
        if sum(sent) > 6 * MIB:  # part 1 is through, the upload exists on the server
            raise Interrupted("the upload broke midway")

    with pytest.raises(Interrupted):
        store.put_file(key, temp, progress=progress)
    assert temp.exists()  # the caller's temp stays where it was on failure
    assert store.get_bytes(key) == b"the old version"  # readers never saw a half object
    assert client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []  # aborted
    assert store.list_prefix("jobs/j4") == ["jobs/j4/frames.npy"]


def test_list_and_delete_prefix_with_nested_keys(store):
    for key in ("jobs/a/job.json", "jobs/a/.scratch/t1/part", "jobs/a/sub/deeper/x.bin", "jobs/ab/job.json",
                "jobs/b/job.json"):
        store.put_bytes(key, key.encode())
    wanted = ["jobs/a/.scratch/t1/part", "jobs/a/job.json", "jobs/a/sub/deeper/x.bin"]
    assert store.list_prefix("jobs/a") == wanted  # not jobs/ab: the prefix is a folder
    assert store.list_prefix("jobs/a/") == wanted
    assert store.list_prefix("jobs") == sorted([*wanted, "jobs/ab/job.json", "jobs/b/job.json"])
    assert store.list_prefix("nothing/here") == []
    assert store.delete_prefix("jobs/a/.scratch") == 1
    assert store.delete_prefix("jobs/a") == 2
    assert store.list_prefix("jobs/a") == [] and store.delete_prefix("jobs/a") == 0
    assert store.exists("jobs/ab/job.json") and store.exists("jobs/b/job.json")


def test_open_range(store):
    data = bytes(range(256)) * 12 * 1024  # 3 MiB: more than one chunk
    store.put_bytes("jobs/r/story.mp4", data)

    def read(start=0, end=None):
        return b"".join(store.open_range("jobs/r/story.mp4", start, end))

    assert read() == data
    assert read(10, 19) == data[10:20]
    assert read(0, 0) == data[:1]
    assert read(100) == data[100:]
    assert read(1, len(data) - 2) == data[1:-1]
    assert read(len(data) - 5, len(data) + 100) == data[-5:]  # an end past the object: up to its end
    assert read(len(data) + 10) == b""  # a start past the end: nothing
    assert len(list(store.open_range("jobs/r/story.mp4"))) >= 3
    with pytest.raises(FileNotFoundError):
        list(store.open_range("jobs/r/missing.mp4"))


def test_readable_path(store, tmp_path):
    store.put_bytes("jobs/p/story.mp4", b"mp4 bytes")
    scratch = tmp_path / "scratch"
    path = store.readable_path("jobs/p/story.mp4", scratch)
    assert path.read_bytes() == b"mp4 bytes" and path.name == "story.mp4"
    if isinstance(store, LocalStorage):
        assert path == store.path("jobs/p/story.mp4")  # the stored file itself
    else:
        assert path.is_relative_to(scratch)
        again = store.readable_path("jobs/p/story.mp4", scratch)
        assert again != path and again.read_bytes() == b"mp4 bytes"  # a new file each time
    before = sorted(p for p in scratch.rglob("*")) if scratch.exists() else []
    with pytest.raises(FileNotFoundError):
        store.readable_path("jobs/p/missing.mp4", scratch)
    assert (sorted(p for p in scratch.rglob("*")) if scratch.exists() else []) == before  # nothing left behind


@pytest.mark.parametrize("key", ["", "/", "/abs/key", "../x", "jobs/../x", "jobs/./x", "a\\b", "jobs/.."])
def test_bad_keys_are_refused(store, key, tmp_path):
    for call in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key), lambda: store.exists(key),
                 lambda: store.size(key), lambda: store.delete(key), lambda: store.list_prefix(key),
                 lambda: store.delete_prefix(key), lambda: store.url(key),
                 lambda: list(store.open_range(key))):
        with pytest.raises(ValueError):
            call()


def test_url(store):
    if isinstance(store, S3Storage):
        assert store.url("jobs/u/report.json") == f"s3://{store.bucket}/alive/jobs/u/report.json"
        assert store.presigned_url("jobs/u/report.json", 60) is not None
    else:
        assert store.url("jobs/u/report.json").startswith("file://")
        assert store.presigned_url("jobs/u/report.json", 60) is None  # the API serves local files itself


def _get(url: str, headers: dict[str, str] | None = None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_presigned_url_downloads_ranges_and_expires(store):
    _s3_only(store)
    data = os.urandom(200_000)
    store.put_bytes("jobs/s/story.mp4", data)
    url = store.presigned_url("jobs/s/story.mp4", 60, filename="j1.mp4", content_type="video/mp4")
    status, headers, body = _get(url)
    assert status == 200 and body == data
    assert headers["Content-Type"] == "video/mp4"
    assert headers["Content-Disposition"] == 'attachment; filename="j1.mp4"'
    status, headers, body = _get(url, {"Range": "bytes=1000-1999"})
    assert status == 206 and body == data[1000:2000] and headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    status, _, body = _get(url, {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    plain = store.presigned_url("jobs/s/story.mp4", 60)
    assert _get(plain)[0] == 200 and "response-content-disposition" not in plain
    # the signature is checked: another key with this signature, or no signature, is refused
    assert _get(url.replace("jobs/s/story.mp4", "jobs/s/other.mp4"))[0] == 403
    assert _get(f"{store.endpoint_url}/{store.bucket}/{store.full_key('jobs/s/story.mp4')}")[0] == 403
    short = store.presigned_url("jobs/s/story.mp4", 1)
    time.sleep(2.5)
    status, _, body = _get(short)
    assert status == 403 and b"expired" in body.lower()


def test_content_disposition_is_safe():
    assert content_disposition("a.mp4") == 'attachment; filename="a.mp4"'
    odd = content_disposition('é"\\.mp4')
    assert odd.startswith('attachment; filename="___.mp4"') and "filename*=UTF-8''%C3%A9%22%5C.mp4" in odd


def test_unreachable_endpoint_is_transient_and_quick():
    port = free_ports(1)[0]  # nothing listens there
    store = S3Storage("nowhere", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=1,
                      read_timeout=2)
    started = time.monotonic()
    for call in (lambda: store.put_bytes("jobs/x/a", b"x"), lambda: store.exists("jobs/x/a"),
                 lambda: store.get_bytes("jobs/x/a"), lambda: store.list_prefix("jobs")):
        with pytest.raises(TransientError) as caught:
            call()
        assert caught.value.code == "storage_unavailable" and f"127.0.0.1:{port}" in caught.value.message
    with pytest.raises(OSError, match="not usable"):
        store.check()
    assert time.monotonic() - started < scaled(5)


def test_missing_bucket_fails_the_check(s3_server):
    store = S3Storage("no-such-bucket-here", endpoint_url=s3_server.endpoint_url)
    with pytest.raises(OSError, match="does not exist"):
        store.check()


def test_prefixes_keep_deployments_apart(s3_server):
    bucket = s3_server.new_bucket()
    one = S3Storage(bucket, prefix="one", endpoint_url=s3_server.endpoint_url)
    two = S3Storage(bucket, prefix="two/deeper/", endpoint_url=s3_server.endpoint_url)
    one.put_bytes("jobs/a/job.json", b"1")
    two.put_bytes("jobs/a/job.json", b"2")
    assert one.list_prefix("jobs") == two.list_prefix("jobs") == ["jobs/a/job.json"]
    assert one.get_bytes("jobs/a/job.json") == b"1" and two.get_bytes("jobs/a/job.json") == b"2"
    assert two.url("jobs/a/job.json") == f"s3://{bucket}/two/deeper/jobs/a/job.json"
    assert one.delete_prefix("jobs") == 1 and two.exists("jobs/a/job.json")
    with pytest.raises(ValueError):
        S3Storage(bucket, prefix="../up")


def _client_error(code: str, status: int, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


@pytest.mark.parametrize(("error", "kind", "code"), [
    (_client_error("XMinioStorageFull", 507), StorageFull, "disk_full"),
    (_client_error("InsufficientStorage", 507), StorageFull, "disk_full"),
    (_client_error("QuotaExceeded", 403), StorageFull, "disk_full"),
    (_client_error("InternalError", 500, "assign volume: No free volumes left for {collection}"), StorageFull,
     "disk_full"),
    (_client_error("InternalError", 500, "volume full"), StorageFull, "disk_full"),
    (_client_error("SomethingNew", 507), StorageFull, "disk_full"),
    (_client_error("ServiceUnavailable", 503), TransientError, "storage_unavailable"),
    (_client_error("InternalError", 500, "please try again"), TransientError, "storage_unavailable"),
    (EndpointConnectionError(endpoint_url="http://x"), TransientError, "storage_unavailable"),
    (_client_error("NoSuchKey", 404), FileNotFoundError, None),
    (_client_error("AccessDenied", 403), PermissionError, None),
    (_client_error("NoSuchBucket", 404), OSError, None),
])
def test_error_mapping(error, kind, code):
    store = S3Storage("b", endpoint_url="http://s3.example:9000")
    got = store.translate(error, "writing jobs/x/a")
    assert type(got) is kind or (kind is OSError and type(got) is OSError), got
    if code:
        assert got.code == code and "s3.example:9000" in got.message
    try:  # an upload's ClientError arrives wrapped by boto3; the cause is found inside
        try:
            raise error
        except Exception:
            raise S3UploadFailedError("Failed to upload")
    except S3UploadFailedError as wrapped:
        assert type(store.translate(wrapped, "uploading")) is type(got)
