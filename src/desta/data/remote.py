"""Source trees: a corpus root that is a local directory or an `s3://bucket/prefix`, read the same way by recipes.

Used by `desta prepare`, and by audio decoding (desta.data.audio) when training and evaluation read s3:// clips.
S3 goes through boto3; the endpoint comes from $AWS_ENDPOINT_URL (or
$AWS_ENDPOINT_URL_S3) and credentials from the standard AWS environment / config chain. Neither is ever written to
logs, the manifest, or MLflow params (URIs carry only bucket and key).

Only what the corpus holds is read: a path from metadata must be relative, without `..`, and (locally) resolve to a
regular file inside the root (`UnsafePath` otherwise: absolute paths, escapes through symlinks, FIFOs, devices).
S3 requests have a time-out and are retried on connection errors, time-outs, 5xx and throttling (params `io:`);
a key that is not there is `FileNotFoundError`; an endpoint that stays away is `EndpointError` (never a bad clip).
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from desta.io_retry import EndpointError, RetryPolicy, causes, retry

MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests"}


class UnsafePath(ValueError):
    """A metadata path that leaves the source root or names something other than a regular file."""


class Tree(Protocol):
    root: str

    def exists(self, rel: str) -> bool: ...
    def read_text(self, rel: str) -> str: ...
    def read_bytes(self, rel: str) -> bytes: ...
    def walk(self, rel: str = "", suffixes: tuple[str, ...] = ()) -> Iterator[str]: ...
    def uri(self, rel: str) -> str: ...
    def check_rel(self, rel: str) -> None: ...


def split_s3(uri: str) -> tuple[str, str]:
    """"s3://bucket/a/b" -> ("bucket", "a/b")."""
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise ValueError(f"{uri!r}: not an s3:// URI; expected s3://bucket/prefix")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


def check_relative(rel: str) -> None:
    """A metadata path must stay inside its corpus: relative, no `..` component, no NUL byte."""
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if not rel or "\0" in rel or rel.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise UnsafePath(f"{rel!r} is not a path inside the source root; metadata paths are relative to the corpus "
                         "root, without '..' or a leading '/'")


def read_regular(path: str | Path) -> bytes:
    """The bytes of a regular file; a FIFO, device, socket or directory raises UnsafePath without blocking (opened
    non-blocking, checked on the open descriptor so a swap after a check cannot slip through)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a directory" if stat.S_ISDIR(mode) else "not a regular file")
            raise UnsafePath(f"{path} is {kind}; only regular files are read")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def s3_client(policy: RetryPolicy):
    """A boto3 S3 client; endpoint from $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL (None -> AWS itself). botocore's
    own retries are off: `s3_call` retries with the `io:` policy, so every failure is classified once."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(connect_timeout=policy.timeout_s, read_timeout=policy.timeout_s,
                    retries={"max_attempts": 1, "mode": "standard"})
    # a session per client: the credentials are the environment's now, not those boto3's default session cached
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def s3_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def s3_transient(err: BaseException) -> bool:
    """Connection errors, time-outs, dropped bodies, 5xx and throttling answers: the endpoint, not the object."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, ResponseStreamingError

    for e in causes(err):
        if isinstance(e, ClientError):
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or status in (408, 429) or e.response.get("Error", {}).get("Code") in TRANSIENT_CODES
        if isinstance(e, ConnectionError | HTTPClientError | ResponseStreamingError | OSError):
            return True
    return False


def s3_call(fn: Any, what: str, policy: RetryPolicy) -> Any:
    """`fn()` against S3 with retries; a missing key -> FileNotFoundError; the endpoint away for good, or refusing
    access -> EndpointError (one line naming the endpoint)."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"S3 endpoint {s3_endpoint()}: {what}"
    try:
        return retry(fn, what=where, policy=policy, transient=s3_transient,
                     hint="Check that the server is up, $AWS_ENDPOINT_URL and the AWS credentials; raise io.retries "
                          "for a longer outage")
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        if code in MISSING_CODES:
            raise FileNotFoundError(f"{what}: no such object") from None
        raise EndpointError(f"{where}: refused ({code}: {err.response.get('Error', {}).get('Message', '')}); "
                            "check the bucket, the key's permissions and the AWS credentials") from None
    except BotoCoreError as err:  # no credentials, bad endpoint URL, ...
        raise EndpointError(f"{where}: {type(err).__name__}: {err}; check $AWS_ENDPOINT_URL and the AWS "
                            "credentials") from None


# Policy of clip reads that have no params at hand (training and evaluation load s3:// clips one at a time, in
# DataLoader workers too): the stage entry installs params `io:` with use_io_policy; until then, this one.
FALLBACK_POLICY = RetryPolicy(retries=3, backoff_s=1.0, max_wait_s=10.0, timeout_s=60.0)
_POLICY: list[RetryPolicy] = []


def use_io_policy(policy: RetryPolicy) -> None:
    """Make `policy` the one io_policy() returns in this process (and in the processes it forks)."""
    _POLICY[:] = [policy]


def io_policy() -> RetryPolicy:
    return _POLICY[0] if _POLICY else FALLBACK_POLICY


class LocalTree:
    def __init__(self, root: str | Path):
        self.root = str(root)

    def _p(self, rel: str) -> Path:
        return Path(self.root) / rel if rel else Path(self.root)

    def check_rel(self, rel: str) -> None:
        """UnsafePath unless `rel` resolves (symlinks followed) to a place inside the root."""
        check_relative(rel)
        real, base = self._p(rel).resolve(), Path(self.root).resolve()
        if real != base and base not in real.parents:
            raise UnsafePath(f"{rel!r} leads outside the source root (to {real}); only files inside "
                             f"{self.root} are read")

    def exists(self, rel: str) -> bool:
        return self._p(rel).exists()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8-sig")

    def read_bytes(self, rel: str) -> bytes:
        if rel:
            self.check_rel(rel)
        return read_regular(self._p(rel))

    def walk(self, rel: str = "", suffixes: tuple[str, ...] = ()) -> Iterator[str]:
        """Relative paths of files under `rel`, sorted (deterministic), filtered by lower-case suffix."""
        base = Path(self.root)
        for p in sorted(self._p(rel).rglob("*")):
            if p.is_file() and (not suffixes or p.suffix.lower() in suffixes):
                yield p.relative_to(base).as_posix()

    def uri(self, rel: str) -> str:
        return str(self._p(rel))


class S3Tree:
    """An s3:// prefix. Objects are listed page by page (millions of keys stream, never all in memory); every
    request is retried on its own (params `io:`)."""

    def __init__(self, uri: str, policy: RetryPolicy, client=None):
        self.bucket, self.prefix = split_s3(uri)
        self.root = uri.rstrip("/")
        self._client = client
        self.policy = policy

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client(self.policy)
        return self._client

    def _key(self, rel: str) -> str:
        return "/".join(p for p in (self.prefix, rel.strip("/")) if p)

    def check_rel(self, rel: str) -> None:
        check_relative(rel)

    def exists(self, rel: str) -> bool:
        key = self._key(rel)
        resp = s3_call(lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1),
                       f"LIST s3://{self.bucket}/{key}", self.policy)
        return any(o["Key"] == key or o["Key"].startswith(key.rstrip("/") + "/") or not key
                   for o in resp.get("Contents", []))

    def read_bytes(self, rel: str) -> bytes:
        self.check_rel(rel)
        return read_s3(self.bucket, self._key(rel), self.client, self.policy)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8-sig")

    def walk(self, rel: str = "", suffixes: tuple[str, ...] = ()) -> Iterator[str]:
        prefix = self._key(rel)
        prefix = prefix + "/" if prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = s3_call(lambda kw=kw: self.client.list_objects_v2(**kw), f"LIST s3://{self.bucket}/{prefix}",
                           self.policy)
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not suffixes or os.path.splitext(key)[1].lower() in suffixes:
                    yield key[strip:]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def uri(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self._key(rel)}"


def read_s3(bucket: str, key: str, client: Any, policy: RetryPolicy) -> bytes:
    """One object's bytes; the GET and the body read are retried together (a body cut mid-way is re-fetched)."""
    return s3_call(lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(), f"GET s3://{bucket}/{key}",
                   policy)


def open_tree(path: str | Path, policy: RetryPolicy) -> LocalTree | S3Tree:
    return S3Tree(str(path), policy) if str(path).startswith("s3://") else LocalTree(path)


@functools.lru_cache(maxsize=4)
def _process_client(policy: RetryPolicy, endpoint: str, key_id: str | None, pid: int):
    return s3_client(policy)


def read_uri(uri: str, policy: RetryPolicy) -> bytes:
    """Bytes of a local regular file or an s3:// object (used by prepare's workers; each process keeps one
    client). Raises FileNotFoundError, UnsafePath (not a regular file), EndpointError or OSError."""
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        client = _process_client(policy, s3_endpoint(), os.environ.get("AWS_ACCESS_KEY_ID"), os.getpid())
        return read_s3(bucket, key, client, policy)
    return read_regular(uri)
