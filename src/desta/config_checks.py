"""Settings problems found when params load (desta/config.py): pydantic's per-key errors worded with their fix,
cross-field checks (settings valid one by one that cannot work together), credentials written inside URLs, and the
report that names where each bad value was set (the params file, a profile, or an `-S key=value`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from desta.io_retry import redact_url

Layers = list[tuple[str, dict[str, Any]]]  # (where a layer of settings came from, its nested dict); later ones win


def _touches(tree: Any, parts: list[str]) -> bool:
    """Whether `tree` sets the key `parts`, a section above it or a setting below it."""
    node = tree
    for p in parts:
        if not isinstance(node, dict):
            return True  # the layer replaced a whole parent (a list, a scalar)
        if p not in node:
            return False
        node = node[p]
    return True


def _origin(layers: Layers, keys: list[str]) -> str:
    """The last layer that set any of `keys` (an `-S key=value`, a profile, the params file)."""
    for label, tree in reversed(layers[1:]):
        if any(_touches(tree, k.split(".")) for k in keys):
            return label
    return layers[0][0]


def pydantic_problems(err: ValidationError) -> list[tuple[list[str], str]]:
    """([key], message) per pydantic error, worded with the fix."""
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]).replace("validate_", "validate")
        if e["type"] == "missing":
            msg = (f"missing; every setting is written in the params file (the repository's params.yaml lists each "
                   f"one with its default): add `{key.rsplit('.', 1)[-1]}:` there")
        elif e["type"] == "extra_forbidden":
            parent = key.rsplit(".", 1)[0] if "." in key else "the top level"
            msg = (f"unknown key; remove it or fix its spelling (allowed keys are those of `{parent}` in "
                   "desta/config.py)")
        else:
            got = e.get("input")
            msg = e["msg"] + ("" if isinstance(got, dict | list) else f" (got {got!r})")
        out.append(([key or "(top level)"], msg))
    return out


def cross_field(p: Any, raw: dict[str, Any]) -> list[tuple[list[str], str]]:
    """Settings (`p`: a validated desta.config.Params) that are valid one by one but cannot work together, found
    before any stage starts."""
    out: list[tuple[list[str], str]] = []
    pc, q, v = p.prepare, p.prepare.quality, p.validate_
    if pc.valid_fraction + pc.test_fraction >= 1:
        out.append((["prepare.valid_fraction", "prepare.test_fraction"],
                    f"{pc.valid_fraction} + {pc.test_fraction} leaves no clip for the train split; the sum must be "
                    "below 1"))
    names = [s.name for s in pc.sources]
    if len(set(names)) != len(names):
        out.append((["prepare.sources"], f"source names must be unique, got {names}"))
    for section, lo, hi in (("prepare.quality", q.min_duration_s, q.max_duration_s),
                            ("validate", v.min_duration_s, v.max_duration_s)):
        if lo >= hi:
            out.append(([f"{section}.min_duration_s", f"{section}.max_duration_s"],
                        f"min_duration_s {lo} must be below max_duration_s {hi} (no clip could pass)"))
    if v.response_min_chars > v.response_max_chars:
        out.append((["validate.response_min_chars", "validate.response_max_chars"],
                    f"response_min_chars {v.response_min_chars} exceeds response_max_chars {v.response_max_chars}"))
    for key, value in _strings(raw):
        if redact_url(value) != value:
            out.append(([key], "a URL with credentials (user:password@) would be written to MLflow params, dvc.lock "
                               "and logs; drop them from the URL and use the environment (MLFLOW_TRACKING_USERNAME/"
                               "PASSWORD, AWS_* variables, or the variable named by evaluate.judge.api_key_env)"))
    return out


def _strings(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{prefix}{i}.")
    elif isinstance(node, str):
        yield prefix.rstrip("."), node


def report(layers: Layers, problems: list[tuple[list[str], str]]) -> str:
    origins = [_origin(layers, keys) for keys, _ in problems]
    where = ", ".join(dict.fromkeys(origins))
    lines = [f"{where}: invalid settings ({len(problems)} problem(s)):"]
    for (keys, msg), origin in zip(problems, origins, strict=True):
        suffix = f" [set by {origin}]" if origin != where else ""
        lines.append(f"  - {' + '.join(keys)}: {msg}{suffix}")
    return "\n".join(lines)
