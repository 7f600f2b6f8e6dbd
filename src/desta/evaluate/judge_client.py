"""HTTP client of the `openai` judge (desta/evaluate/judge.py): one JSON POST with retries, back-off and clear errors.

Retried: HTTP 408, 409, 425, 429 and 5xx answers, time-outs, refused or dropped connections; the wait doubles from
`backoff_s` (or follows the server's Retry-After, capped at MAX_WAIT_S). Not retried: other 4xx answers (a wrong key,
model or URL does not heal). The API key travels only in the Authorization header and is redacted from every
message and log line. Standard library only (urllib), so nothing extra is installed for the judge.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_S = 120.0  # per request
MAX_RETRIES = 5  # after the first attempt
BACKOFF_S = 2.0  # first wait; doubled after each failure
MAX_WAIT_S = 60.0
RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class JudgeEndpointError(RuntimeError):
    """The judge endpoint failed for good; the message names the endpoint, the model, the error and the fix."""


@dataclass
class Endpoint:
    url: str
    model: str
    key: str
    timeout_s: float = TIMEOUT_S
    max_retries: int = MAX_RETRIES
    backoff_s: float = BACKOFF_S

    def redact(self, text: str) -> str:
        return text.replace(self.key, "***") if self.key else text

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` as JSON; the decoded JSON answer. Raises JudgeEndpointError when retries are used up or the
        answer is a non-retryable error."""
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(self.url, data=data, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                return self._decode(raw)
            except urllib.error.HTTPError as err:
                detail = self.redact(err.read()[:300].decode("utf-8", "replace"))
                last = f"HTTP {err.code}: {detail}"
                if err.code not in RETRYABLE:
                    raise JudgeEndpointError(f"judge endpoint {self.url} (model {self.model}) answered {last}; "
                                             f"{_hint(err.code)}") from None
                wait = _retry_after(err.headers.get("Retry-After"))
            except (OSError, http.client.HTTPException) as err:  # time-outs, refused/dropped connections, URLError
                reason = getattr(err, "reason", err)
                last = f"{type(reason).__name__}: {self.redact(str(reason))}"
                wait = None
            if attempt == self.max_retries:
                break
            wait = min(MAX_WAIT_S, wait if wait is not None else self.backoff_s * 2 ** attempt)
            log.warning("judge endpoint %s: %s; retry %d/%d in %.1f s", self.url, last, attempt + 1,
                        self.max_retries, wait)
            time.sleep(wait)
        raise JudgeEndpointError(f"judge endpoint {self.url} (model {self.model}) failed {self.max_retries + 1} times; "
                                 f"last error {last}. Check that the server is up and not rate-limiting this key, "
                                 "or use params.evaluate.judge.kind: local")

    def _decode(self, raw: bytes) -> dict[str, Any]:
        try:
            out = json.loads(raw)
        except json.JSONDecodeError:
            raise JudgeEndpointError(f"judge endpoint {self.url} (model {self.model}) answered non-JSON: "
                                     f"{self.redact(raw[:300].decode('utf-8', 'replace'))!r}; is base_url an "
                                     "OpenAI-compatible /v1 root?") from None
        if not isinstance(out, dict):
            raise JudgeEndpointError(f"judge endpoint {self.url}: expected a JSON object, got {type(out).__name__}")
        return out


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given in seconds (HTTP dates are ignored: back-off applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _hint(status: int) -> str:
    return {401: "the key is wrong: export a valid one in the variable named by params.evaluate.judge.api_key_env",
            403: "the key may not use this model: check params.evaluate.judge.model",
            404: "check params.evaluate.judge.base_url (the /v1 root) and model"}.get(
        status, "check params.evaluate.judge (base_url, model) and the request")
