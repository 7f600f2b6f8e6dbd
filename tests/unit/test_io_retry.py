"""The shared retry loop: transient errors are retried with doubling, capped waits and then reported in one line;
anything else is raised at once (a bad input is never retried, a server being away never looks like bad input)."""

from __future__ import annotations

import pytest

from desta.io_retry import EndpointError, RetryPolicy, retry

POLICY = RetryPolicy(retries=4, backoff_s=1.0, max_wait_s=3.0, timeout_s=1.0)


def test_transient_errors_are_retried_with_capped_doubling_waits_then_fail_in_one_line():
    waits, calls = [], []

    def call():
        calls.append(1)
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(EndpointError) as err:
        retry(call, what="S3 endpoint http://u:pw@h:9: GET s3://b/k", policy=POLICY,
              transient=lambda e: isinstance(e, ConnectionError), hint="Check the server.", sleep=waits.append)
    assert len(calls) == 5 and waits == [1.0, 2.0, 3.0, 3.0]
    message = str(err.value)
    assert "\n" not in message and "failed 5 time(s)" in message and "Connection refused" in message
    assert "pw" not in message and message.endswith("Check the server.")


def test_a_recovered_endpoint_returns_and_other_errors_are_not_retried():
    attempts = iter([ConnectionResetError("reset"), TimeoutError("slow"), "ok"])

    def flaky():
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    assert retry(flaky, what="x", policy=POLICY, transient=lambda e: isinstance(e, OSError), hint="",
                 sleep=lambda s: None) == "ok"
    calls = []

    def bad_input():
        calls.append(1)
        raise ValueError("not audio")

    with pytest.raises(ValueError, match="not audio"):
        retry(bad_input, what="x", policy=POLICY, transient=lambda e: isinstance(e, OSError), hint="",
              sleep=lambda s: None)
    assert len(calls) == 1
