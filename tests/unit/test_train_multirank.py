"""N training ranks behave like one: 2 ranks on CPU (gloo) under `torchrun` and under the `deepspeed` launcher, on the
tiny model of test_train_fixtures (tests/unit/train_launch_entry.py is what the launchers start).

- 2 ranks at half the micro-batch log the losses of 1 rank (the global batch is split over the ranks and the loss
  weighted by each rank's share of its label tokens, then summed over ranks before logging);
- one MLflow run per job (a real SQLite store): only rank 0 creates the experiment and the run; a launch killed
  with SIGKILL leaves its run RUNNING, and the relaunch that resumes the job continues that run and ends it FINISHED;
- resuming on another number of ranks continues exactly when micro-batch x ranks is unchanged and is refused,
  naming the fix, when it is not.
About 4 minutes on 2 cores (each launch imports torch in two processes; the first DeepSpeed launch on a machine
also JIT-compiles shm_comm, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil  # a dependency of deepspeed
import pytest
from fixtures_s3 import _free_port
from params_util import default_params
from test_train_fixtures import TinyAudioLM, make_generated

from desta.tracking import RUN_FILE
from desta.train.recipe import run_train

pytestmark = pytest.mark.slow

ENTRY = Path(__file__).with_name("train_launch_entry.py")
BIN = Path(sys.executable).parent
LAUNCH_TIMEOUT = 900


def changes(root: Path, **train) -> dict:
    base = {"max_steps": 8, "micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 2, "eval_every": 4, "save_every": 4,
            "log_every": 2, "progress": False, "seed": 1}
    return {"paths": {"generated": str(root / "generated"), "checkpoints": str(root / "ckpt"),
                      "model": str(root / "model"), "manifests": str(root / "manifests")},
            "tracking": {"enabled": True, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "multirank"},
            "train": {**base, **train}}


def launch(launcher: str, root: Path, change: dict, hang_after: int | None = None) -> subprocess.Popen:
    """Start a 2-rank job; its output goes to root/launch-<n>.log."""
    cfg = root / f"changes-{time.monotonic_ns()}.json"
    cfg.write_text(json.dumps(change))
    port = str(_free_port())
    cmd = ([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", port] if launcher == "torchrun" else
           [str(BIN / "deepspeed"), "--num_gpus", "2", "--no_local_rank", "--master_port", port])
    cmd += [str(ENTRY), str(cfg)] + (["--hang-after", str(hang_after)] if hang_after is not None else [])
    log = root / f"launch-{len(list(root.glob('launch-*.log')))}.log"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, expect_ok: bool = True) -> str:
    try:
        proc.wait(timeout=LAUNCH_TIMEOUT)
    finally:
        kill_job(proc)
    text = proc.log.read_text(errors="replace")  # type: ignore[attr-defined]
    assert (proc.returncode == 0) == expect_ok, f"launcher exit {proc.returncode}:\n{text[-4000:]}"
    return text


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts its workers in their own sessions)."""
    try:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
    proc.wait(timeout=30)


def run_until_hung_then_kill(proc: subprocess.Popen, root: Path) -> None:
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not (root / "ckpt" / "hung").is_file():
        assert proc.poll() is None, f"job ended before the hang point:\n{proc.log.read_text()[-4000:]}"  # type: ignore
        assert time.monotonic() < deadline, "job did not reach the hang point in time"
        time.sleep(0.5)
    kill_job(proc)


def train_runs(root: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("multirank")
    return client.search_runs([exp.experiment_id], "tags.`desta.stage` = 'train'") if exp else []


def loss_rows(model_dir: Path) -> list[tuple[int, float | None, float | None]]:
    lines = (model_dir / "loss.csv").read_text().splitlines()[1:]
    return [(int(s), float(t) if t else None, float(v) if v else None)
            for s, t, v, _ in (line.split(",") for line in lines)]


def assert_same_losses(got: list, want: list) -> None:
    assert [r[0] for r in got] == [r[0] for r in want]
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g[1:], w[1:], strict=True):
            assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, rel=1e-5, abs=1e-6)), (g, w)


def metric_by_step(run_id: str, root: Path, key: str) -> dict[int, float]:
    """The last value logged at each step (a relaunch logs again the steps after its checkpoint)."""
    history = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_metric_history(run_id, key)
    return {m.step: m.value for m in sorted(history, key=lambda m: (m.timestamp, m.step))}


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> list:
    """The reference: one rank at micro-batch 4, in this process, no dropout (masks are drawn per rank)."""
    root = tmp_path_factory.mktemp("one-rank")
    make_generated(root)
    change = changes(root, micro_batch_size=4)
    change["tracking"] = {"enabled": False}
    run_train(default_params(change), lambda p: TinyAudioLM(seed=p.train.seed, dropout=0.0))
    return loss_rows(root / "model")


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_ranks_match_one_rank_log_one_run_and_survive_kill9(tmp_path, one_rank, launcher):
    make_generated(tmp_path)
    change = changes(tmp_path, strategy="torch" if launcher == "torchrun" else "deepspeed")
    run_until_hung_then_kill(launch(launcher, tmp_path, change, hang_after=4), tmp_path)
    runs = train_runs(tmp_path)  # the first launch created the experiment and the run without racing
    assert [r.info.status for r in runs] == ["RUNNING"], "a SIGKILL leaves the run RUNNING until the relaunch"
    assert (tmp_path / "ckpt" / RUN_FILE).is_file()

    (tmp_path / "ckpt" / "hung").unlink()
    finish(launch(launcher, tmp_path, change))
    runs = train_runs(tmp_path)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(runs[0].info.run_id, "FINISHED")], \
        "one run per job: the relaunch continued the killed launch's run"
    assert runs[0].data.tags["desta.launches"] == "2" and not (tmp_path / "ckpt" / RUN_FILE).exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-00000004") and summary["world_size"] == 2
    assert summary["samples_seen"] == 8 * 2 * 4, "samples of both ranks (8 steps x 2 micro-batches x 2 x 2)"
    rows = loss_rows(tmp_path / "model")
    assert_same_losses(rows, one_rank)
    logged = metric_by_step(runs[0].info.run_id, tmp_path, "train/train_loss")
    assert logged == {s: pytest.approx(t, abs=1e-6) for s, t, _ in rows if t is not None}, \
        "MLflow has the loss averaged over ranks, as loss.csv"


def test_resume_on_another_number_of_ranks_is_exact_or_refused(tmp_path, one_rank):
    make_generated(tmp_path)
    change = changes(tmp_path, micro_batch_size=4)
    run_train(default_params(change), lambda p: TinyAudioLM(seed=p.train.seed, dropout=0.0), stop_after=4)
    runs = train_runs(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"], "an interrupted job's run stays continuable"

    refused = finish(launch("torchrun", tmp_path, change), expect_ok=False)  # 2 x 4 records: batches re-cut
    assert "written by 1 rank(s) at 4 records per global micro-batch" in refused
    assert "-S train.micro_batch_size=2" in refused

    finish(launch("torchrun", tmp_path, changes(tmp_path, micro_batch_size=2)))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-00000004") and summary["world_size"] == 2
    assert_same_losses(loss_rows(tmp_path / "model"), one_rank)
    assert [r.info.status for r in train_runs(tmp_path)] == ["FINISHED"]
