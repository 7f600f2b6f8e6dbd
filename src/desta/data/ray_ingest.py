"""`desta prepare` on a Ray cluster (prepare.ray_address set): the per-file audio checks (prepare's own check
function) run as Ray Data tasks across the cluster; everything that decides the manifest (order, de-duplication,
splits, shard writing, the quarantine report) stays on the driver, so the shards are the same bytes as a local run.

Every node must read the audio: an `s3://` source, or a path on storage mounted at the same place on every node.
Local relative paths are made absolute against the driver's working directory before they travel.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from desta.ray_cluster import ray_cluster

Task = tuple  # (uri, ...): prepare's check task, whose first field is the audio URI
CheckFn = Callable[[Task], tuple[str, Any]]  # task -> (uri, result), as prepare's check function


def _absolute(task: Task, cwd: str) -> Task:
    uri = task[0]
    if uri.startswith("s3://") or os.path.isabs(uri):
        return task
    return (str(Path(cwd) / uri), *task[1:])


def _check_batch(batch: dict[str, np.ndarray], fn: CheckFn, cwd: str) -> dict[str, np.ndarray]:
    """Ray Data task: check each pickled task of the batch; results keep their input index."""
    results = []
    for blob in batch["task"]:
        task = pickle.loads(blob)
        _uri, result = fn(_absolute(task, cwd))
        results.append(pickle.dumps((task[0], result)))
    return {"index": batch["index"], "result": np.array(results, dtype=object)}


class RayCheckPool:
    """A multiprocessing.Pool look-alike (imap / close / join) whose work runs on the Ray cluster at `address`; the
    connection lasts from construction to close()."""

    def __init__(self, address: str, progress: bool = False):
        self._stack = ExitStack()
        self.cluster = self._stack.enter_context(ray_cluster(address, "prepare.ray_address"))
        self.cwd, self.progress = os.getcwd(), progress

    def imap(self, fn: CheckFn, tasks: Iterable[Task], chunksize: int = 16) -> Iterator[tuple[str, Any]]:
        """fn over tasks on the cluster, results in task order (Ray Data may finish blocks out of order)."""
        import ray.data

        rows = [{"index": i, "task": pickle.dumps(t)} for i, t in enumerate(tasks)]
        if not rows:
            return iter(())
        ctx = ray.data.DataContext.get_current()
        saved, ctx.enable_progress_bars = ctx.enable_progress_bars, self.progress
        try:
            ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // chunksize)).map_batches(
                _check_batch, fn_kwargs={"fn": fn, "cwd": self.cwd}, batch_size=chunksize, num_cpus=1)
            out: list[Any] = [None] * len(rows)
            for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for index, blob in zip(block["index"], block["result"], strict=True):
                    out[int(index)] = pickle.loads(blob)
        finally:
            ctx.enable_progress_bars = saved
        return iter(out)

    def close(self) -> None:
        self._stack.close()

    def terminate(self) -> None:
        """As close() (blocks already handed to the cluster finish there; nothing waits for them)."""
        self.close()

    def join(self) -> None:
        """Nothing to wait for: imap returns once the cluster has answered."""
