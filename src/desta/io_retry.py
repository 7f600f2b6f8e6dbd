"""Transient I/O below the stages: one bounded retry loop for S3, HTTP and MLflow calls, and credential redaction.

`retry(call, what=..., policy=..., transient=...)` runs `call`; an error that `transient` accepts (a refused or
dropped connection, a time-out, a 5xx or throttling answer) is retried after a wait that doubles from
`io.backoff_s` (capped at `io.max_wait_s`), at most `io.retries` times; then `EndpointError` says in one line which
endpoint failed, the last error and what to check. Any other error is raised at once: a server being away is never
mistaken for a bad input, and a bad input is never retried. Settings: the `io:` section of params.yaml.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# scheme://user:password@host -> scheme://***@host (any userinfo part is a credential)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")


class EndpointError(RuntimeError):
    """A remote service (S3, MLflow, an HTTP endpoint) failed for good; the message is one line naming it, the last
    error and what to check."""


@dataclass(frozen=True)
class RetryPolicy:
    """params.yaml `io:` as the loop uses it."""

    retries: int  # attempts after the first
    backoff_s: float  # first wait; doubled after each failure
    max_wait_s: float  # cap of one wait
    timeout_s: float  # connect/read time-out of one request

    @classmethod
    def from_config(cls, cfg: Any) -> RetryPolicy:
        return cls(cfg.retries, cfg.backoff_s, cfg.max_wait_s, cfg.timeout_s)

    def wait(self, attempt: int) -> float:
        return min(self.max_wait_s, self.backoff_s * 2 ** attempt)


def redact_url(text: str) -> str:
    """Credentials written inside URLs (`https://user:pass@host`) replaced by `***`."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)


def describe(err: BaseException, limit: int = 300) -> str:
    """`Type: message` of the root cause (a wrapped `ConnectionRefusedError`, not five layers of wrappers) on one
    line, credentials redacted, at most `limit` characters."""
    root = causes(err)[-1]
    text = " ".join(f"{type(root).__name__}: {root}".split())
    text = redact_url(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def causes(err: BaseException) -> list[BaseException]:
    """The error and every error it was raised from or while handling (libraries wrap connection errors)."""
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in chain and len(chain) < 16:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def retry(call: Callable[[], T], *, what: str, policy: RetryPolicy, transient: Callable[[BaseException], bool],
          hint: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, retried on transient errors; `what` names the endpoint and the operation ("S3 endpoint
    http://host:9000: GET s3://b/k"), `hint` says what to check when it fails for good."""
    last: BaseException | None = None
    what = redact_url(what)
    for attempt in range(policy.retries + 1):
        try:
            return call()
        except Exception as err:
            if not transient(err):
                raise
            last = err
        if attempt == policy.retries:
            break
        wait = policy.wait(attempt)
        log.warning("%s: %s; retry %d/%d in %.1f s", what, describe(last), attempt + 1, policy.retries, wait)
        sleep(wait)
    raise EndpointError(f"{what}: failed {policy.retries + 1} time(s), last error {describe(last)}. "
                        f"{hint}") from None
