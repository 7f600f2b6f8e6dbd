"""Entry of the multi-rank tests (tests/unit/test_train_multirank.py): `desta train`'s run_train on the tiny model
of test_train_fixtures, under a launcher, with params.yaml merged with a JSON file of changes.

    torchrun --nproc_per_node 2 tests/unit/train_launch_entry.py CHANGES.json [--hang-after STEP] [--dropout P]
    deepspeed --num_gpus 2 --no_local_rank tests/unit/train_launch_entry.py CHANGES.json ...

--hang-after STEP: once the checkpoint of STEP is complete, rank 0 writes <paths.checkpoints>/hung and sleeps, so
the test can kill the job with SIGKILL at a known point, as a preemption or an OOM kill would.
Rank 0 writes run_train's summary to <paths.checkpoints>/../summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: params_util
from params_util import default_params  # noqa: E402
from test_train_fixtures import TinyAudioLM  # noqa: E402

from desta.train import recipe  # noqa: E402


def hang_after(step: int) -> None:
    save = recipe.Recipe.save_checkpoint

    def save_then_hang(self: recipe.Recipe) -> Path:
        path = save(self)
        if self.state.step == step and self.engine.is_main:
            (self.ckpt_root / "hung").write_text(str(step))
            time.sleep(3600)
        return path

    recipe.Recipe.save_checkpoint = save_then_hang


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("changes")
    ap.add_argument("--hang-after", type=int, default=None)
    ap.add_argument("--dropout", type=float, default=0.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = default_params(json.loads(Path(args.changes).read_text()))
    if args.hang_after is not None:
        hang_after(args.hang_after)
    summary = recipe.run_train(params, lambda p: TinyAudioLM(seed=p.train.seed, dropout=args.dropout))
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(params.paths.checkpoints).parent / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
