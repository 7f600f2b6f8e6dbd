"""Language-retention check (`desta evaluate`, task "retention"): how much of the backbone's instruction following
survives in the audio model. The same text-only instructions (data/instructions.json: request + one IFEval
constraint) go to the audio model and to its own backbone LLM; both are scored with the IFEval checkers.
Metrics: ifeval_following_rate (audio model), backbone_following_rate, forgetting_rate = (model - backbone) / backbone.
"""

from __future__ import annotations

from typing import Any

from desta.evaluate import ifeval_checks, scorers
from desta.evaluate.loop import Item, Task
from desta.evaluate.tasks.common import IF_SYSTEM, audio_conversation
from desta.evaluate.tasks.heldout import load_instructions


class RetentionTask(Task):
    name = "retention"
    primary = "followed"
    metric_name = "following_rate"
    group_key = "instruction"

    def __init__(self, n_items: int | None = None):
        self.n_items = n_items

    def items(self) -> list[Item]:
        spec = load_instructions()
        pairs = [(r, c) for r in spec["text_requests"] for c in spec["constraints"]]
        pairs = pairs[: self.n_items] if self.n_items else pairs
        items = []
        for k, (request, cons) in enumerate(pairs):
            text = f"{request} {cons['text']}"
            ref = {"instruction_id_list": [cons["id"]], "kwargs": [cons["kwargs"]], "prompt": text}
            for runner in ("model", "backbone"):
                items.append(Item(f"r{k:03d}:{runner}", audio_conversation(None, text, IF_SYSTEM), ref,
                                  {"instruction": cons["id"].split(":")[0]}, runner=runner))
        return items

    def score(self, item: Item, prediction: str) -> dict[str, Any]:
        ref = item.reference
        ok = ifeval_checks.check(prediction, ref["instruction_id_list"], ref["kwargs"], ref["prompt"])
        return {"followed": float(all(ok))}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        model = [r for r in records if r["runner"] == "model"]
        backbone = [r for r in records if r["runner"] == "backbone"]
        out = {f"model/{k}": v for k, v in super().aggregate(model).items()}
        out["ifeval_following_rate"] = scorers.mean([r["followed"] for r in model])
        out["backbone_following_rate"] = scorers.mean([r["followed"] for r in backbone])
        if out["backbone_following_rate"]:
            out["forgetting_rate"] = scorers.forgetting_rate(out["ifeval_following_rate"],
                                                             out["backbone_following_rate"])
        return out
