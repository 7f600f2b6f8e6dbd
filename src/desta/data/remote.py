"""Source trees: a corpus root that is a local directory or an `s3://bucket/prefix`, read the same way by recipes.

Used by `desta prepare`, and by audio decoding (desta.data.audio) when training and evaluation read s3:// clips.
S3 goes through boto3; the endpoint comes from $AWS_ENDPOINT_URL (or
$AWS_ENDPOINT_URL_S3) and credentials from the standard AWS environment / config chain. Neither is ever written to
logs, the manifest, or MLflow params (URIs carry only bucket and key).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol


class Tree(Protocol):
    root: str

    def exists(self, rel: str) -> bool: ...
    def read_text(self, rel: str) -> str: ...
    def read_bytes(self, rel: str) -> bytes: ...
    def walk(self, rel: str = "", suffixes: tuple[str, ...] = ()) -> Iterator[str]: ...
    def uri(self, rel: str) -> str: ...


def split_s3(uri: str) -> tuple[str, str]:
    """"s3://bucket/a/b" -> ("bucket", "a/b")."""
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise ValueError(f"{uri!r}: not an s3:// URI; expected s3://bucket/prefix")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


def s3_client():
    """A boto3 S3 client; endpoint from $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL (None -> AWS itself)."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint)


_PROCESS_CLIENT: dict[tuple[int, str | None], object] = {}


def process_client():
    """One s3_client per process (and endpoint), made on first use: training and evaluation read clips one at a time
    (in DataLoader workers too, which are forked and so must not reuse their parent's connection pool)."""
    key = (os.getpid(), os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    if key not in _PROCESS_CLIENT:
        _PROCESS_CLIENT.clear()
        _PROCESS_CLIENT[key] = s3_client()
    return _PROCESS_CLIENT[key]


class LocalTree:
    def __init__(self, root: str | Path):
        self.root = str(root)

    def _p(self, rel: str) -> Path:
        return Path(self.root) / rel if rel else Path(self.root)

    def exists(self, rel: str) -> bool:
        return self._p(rel).exists()

    def read_text(self, rel: str) -> str:
        return self._p(rel).read_text(encoding="utf-8-sig")

    def read_bytes(self, rel: str) -> bytes:
        return self._p(rel).read_bytes()

    def walk(self, rel: str = "", suffixes: tuple[str, ...] = ()) -> Iterator[str]:
        """Relative paths of files under `rel`, sorted (deterministic), filtered by lower-case suffix."""
        base = Path(self.root)
        for p in sorted(self._p(rel).rglob("*")):
            if p.is_file() and (not suffixes or p.suffix.lower() in suffixes):
                yield p.relative_to(base).as_posix()

    def uri(self, rel: str) -> str:
        return str(self._p(rel))


class S3Tree:
    """An s3:// prefix. Objects are listed with pagination (millions of keys stream, never all in memory)."""

    def __init__(self, uri: str, client=None):
        self.bucket, self.prefix = split_s3(uri)
        self.root = uri.rstrip("/")
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _key(self, rel: str) -> str:
        return "/".join(p for p in (self.prefix, rel.strip("/")) if p)

    def exists(self, rel: str) -> bool:
        key = self._key(rel)
        resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        return any(o["Key"] == key or o["Key"].startswith(key.rstrip("/") + "/") or not key
                   for o in resp.get("Contents", []))

    def read_bytes(self, rel: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8-sig")

    def walk(self, rel: str = "", suffixes: tuple[str, ...] = ()) -> Iterator[str]:
        prefix = self._key(rel)
        prefix = prefix + "/" if prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not suffixes or os.path.splitext(key)[1].lower() in suffixes:
                    yield key[strip:]

    def uri(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self._key(rel)}"


def open_tree(path: str | Path) -> LocalTree | S3Tree:
    return S3Tree(str(path)) if str(path).startswith("s3://") else LocalTree(path)


def read_uri(uri: str, client=None) -> bytes:
    """Bytes of a local path or s3:// object (used by prepare's workers; each process makes its own client)."""
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        return (client or s3_client()).get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri).read_bytes()
