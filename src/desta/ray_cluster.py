"""The Ray cluster behind the data stages (`desta prepare` with prepare.ray_address, `desta generate` with
generate.ray_address): connect, say where the dashboard is, fail early and clearly when the cluster is not there.
Shared by both stages (desta/data/ray_ingest.py, desta/selfgen/ray_run.py); Ray is the optional extra `.[ray]`.

Addresses are Ray's own: "auto" (a `ray start` cluster on this machine), "HOST:6379" (the head's GCS port), or
"ray://HOST:10001" (Ray Client, e.g. a KubeRay head service), or "local" (start a throw-away cluster in-process).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class RayClusterError(RuntimeError):
    """Ray is missing or the configured cluster cannot be reached."""


@dataclass(frozen=True)
class Cluster:
    address: str
    cpus: float
    gpus: float
    nodes: int
    dashboard: str | None


def import_ray(field: str) -> Any:
    try:
        import ray
    except ImportError:
        raise RayClusterError(f"params.yaml {field} is set but Ray is not installed; `pip install -e .[ray]` on "
                              f"this machine and every node, or set {field}: null for local processes") from None
    return ray


def _check_reachable(address: str, field: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address that nobody listens on makes ray.init retry for minutes: probe it."""
    hostport = address.removeprefix("ray://")
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise RayClusterError(f"params.yaml {field}={address!r}: no Ray cluster answers there ({err}); start one "
                              f"(`ray start --head --port=6379` on the head, `ray start --address=HEAD:6379` on the "
                              f"others: docs/pipeline.md, Scaling out) or set {field}: null for local processes"
                              ) from None


@contextmanager
def ray_cluster(address: str, field: str) -> Iterator[Cluster]:
    """Connect to the cluster at `address` (params.yaml `field`) for the duration of a stage. A Ray connection the
    caller already holds (ray.init done before) is used as it is and left open."""
    ray = import_ray(field)
    owned = not ray.is_initialized()
    dashboard = None
    if owned:
        _check_reachable(address, field)
        try:
            ctx = ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except ConnectionError as err:
            raise RayClusterError(f"params.yaml {field}={address!r}: cannot connect to a Ray cluster ({err}); start "
                                  f"one with `ray start --head` or set {field}: null for local processes") from None
        dashboard = getattr(ctx, "dashboard_url", None) or None
    try:
        res = ray.cluster_resources()
        cluster = Cluster(address, res.get("CPU", 0.0), res.get("GPU", 0.0),
                          sum(1 for n in ray.nodes() if n.get("Alive")), dashboard)
        log.info("%s: Ray cluster %s, %d node(s), %g CPU(s), %g GPU(s); dashboard: %s", field.split(".")[0],
                    address, cluster.nodes, cluster.cpus, cluster.gpus,
                    f"http://{dashboard}" if dashboard else "see `ray status` on the head")
        yield cluster
    finally:
        if owned:
            ray.shutdown()
