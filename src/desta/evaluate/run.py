"""`desta evaluate` (DVC stage "evaluate"): run params.evaluate.tasks through the generic loop and write
<paths.eval>/metrics.json (DVC metrics), predictions/<task>.jsonl (one scored record per item),
plots/accuracy_by_slice.csv (DVC plots) and the same metrics to MLflow.

Generators: "model" = the trained DeSTA2.5 composite (params.evaluate.model or paths.model; an untrained connector
when no checkpoint exists, with a warning), "backbone" = its own LLM answering text only.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
from pathlib import Path
from typing import Any

from desta.config import Params
from desta.conversation import without_audio
from desta.evaluate.likelihood import option_logprobs
from desta.evaluate.loop import GenerateFn, Task, run_task
from desta.tracking import stage_run

log = logging.getLogger(__name__)
JUDGED = ("sakura", "dynamic_superb", "speech_ifeval")


def build_tasks(params: Params, judge_fn=None) -> list[Task]:
    """Task objects for params.evaluate.tasks (imports only the tasks asked for)."""
    cfg, root = params.evaluate, params.paths.benchmarks_root
    tasks: list[Task] = []
    for name in cfg.tasks:
        if name == "heldout":
            from desta.evaluate.tasks.heldout import HeldoutTask

            tasks.append(HeldoutTask(params.paths.manifests, cfg.seed, cfg.heldout_max_per_attribute,
                                     cfg.heldout_asr_items, cfg.heldout_ifeval_items, cfg.heldout_open_questions,
                                     params.generate.system_prompt))
        elif name == "retention":
            from desta.evaluate.tasks.retention import RetentionTask

            tasks.append(RetentionTask(cfg.retention_items))
        elif name == "mmau":
            from desta.evaluate.tasks.mmau import MMAUTask

            tasks.append(MMAUTask(root))
        elif name == "voicebench":
            from desta.evaluate.tasks.voicebench import VoiceBenchTask

            tasks.append(VoiceBenchTask(root, cfg.voicebench_subsets, cfg.seed))
        elif name == "speech_ifeval":
            from desta.evaluate.tasks.speech_ifeval import SpeechIFEvalTask

            tasks.append(SpeechIFEvalTask(root, judge_fn))
        elif name == "sakura":
            from desta.evaluate.tasks.sakura import SakuraTask

            tasks.append(SakuraTask(root, judge_fn, cfg.sakura_tracks))
        elif name == "dynamic_superb":
            from desta.evaluate.tasks.dynamic_superb import DynamicSuperbTask

            tasks.append(DynamicSuperbTask(root, judge_fn, cfg.dynamic_superb_tasks))
    return tasks


def load_model(params: Params):
    """The trained composite, or (no checkpoint yet) the backbones with a freshly initialised connector."""
    from desta.models.audio_llm import DeSTA25AudioModel, is_checkpoint

    path = Path(params.evaluate.model or params.paths.model)
    if is_checkpoint(path):
        return DeSTA25AudioModel.from_pretrained(path, params.model_cache_dir()).eval()
    log.warning("%s holds no trained model (desta_config.json); evaluating an UNTRAINED connector. Run `desta "
                "train` first, or set evaluate.model", path)
    return DeSTA25AudioModel.from_params(params.model, params.model_cache_dir(), seed=params.evaluate.seed).eval()


def make_runners(params: Params) -> tuple[dict[str, Any], dict[str, Any]]:
    """(generators, choosers): runner name -> factory(max_new_tokens) -> GenerateFn, and runner name -> ChoiceFn
    (likelihood-ranked multiple choice, only with evaluate.choice_scoring). The model loads once, on first use;
    the chooser reuses the transcripts the generator cached (the generation pass runs first)."""
    from desta.evaluate.judge import chat_generate_fn

    model = functools.cache(lambda: load_model(params))
    bs = params.evaluate.batch_size

    @functools.cache
    def backbone():
        if params.model.lora.enabled:  # LoRA changes the LLM: the reference must be the untouched backbone
            from desta.models.store import load_llm

            return load_llm(params.model.llm, params.model_cache_dir())
        return model().language_model, model().tokenizer

    transcripts: dict[str, str] = {}  # audio path -> Whisper transcript, reused by later items on the same clip

    def model_fn(max_new_tokens: int) -> GenerateFn:
        def generate(convs: list[list[dict]]) -> list[str]:
            if params.model.use_transcription:
                convs = [with_cached_transcripts(c, transcripts) for c in convs]
            results = model().generate(convs, max_new_tokens=max_new_tokens, batch_size=bs)
            for conv, res in zip(convs, results, strict=True):
                paths = [a.get("audio") for m in conv for a in m.get("audios") or []]
                transcripts.update({p: t for p, t in zip(paths, res.transcripts, strict=False) if p})
            return [r.text for r in results]

        return generate

    def backbone_fn(max_new_tokens: int) -> GenerateFn:
        return lambda convs: chat_generate_fn(*backbone(), max_new_tokens, bs)(convs)

    def choose(convs: list[list[dict]], options: list[list[str]]) -> list[dict[str, int]]:
        """Per conversation {"choice": most likely option, "calibrated_choice": the option whose likelihood the
        audio raises most over the same question asked without it (domain-conditional PMI, Holtzman et al. 2021):
        a small LLM's preference for some option strings cancels, what the audio adds remains}."""
        if params.model.use_transcription:
            convs = [with_cached_transcripts(c, transcripts) for c in convs]
        scores = option_logprobs(model(), convs, options, batch_size=bs)
        prior = option_logprobs(model(), [without_audio(c) for c in convs], options, batch_size=bs)
        return [{"choice": argmax(s), "calibrated_choice": argmax([a - b for a, b in zip(s, p, strict=True)])}
                for s, p in zip(scores, prior, strict=True)]

    choosers = {"model": choose} if params.evaluate.choice_scoring else {}
    return {"model": model_fn, "backbone": backbone_fn}, choosers


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def with_cached_transcripts(conv: list[dict], cache: dict[str, str]) -> list[dict]:
    """Copy of `conv` whose audio entries carry the clip's transcript when it is already known (the model then
    skips Whisper decoding for a batch whose clips are all known; same greedy transcript, computed once)."""
    out = []
    for m in conv:
        audios = m.get("audios")
        if audios:
            m = {**m, "audios": [{**a, "text": cache[a["audio"]]} if a.get("text") is None and a.get("audio") in cache
                                 else a for a in audios]}
        out.append(m)
    return out


def write_outputs(out_dir: Path, metrics: dict[str, float], records: dict[str, list[dict]]) -> None:
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for task, recs in records.items():
        with open(out_dir / "predictions" / f"{task}.jsonl", "w", encoding="utf-8") as fh:
            for r in recs:
                fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    with open(out_dir / "plots" / "accuracy_by_slice.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice", "accuracy", "chance", "choice_accuracy", "calibrated_choice_accuracy"])
        for k, v in sorted(metrics.items()):
            parts = k.split("/")
            if len(parts) == 3 and parts[2] == "accuracy":
                base = f"{parts[0]}/{parts[1]}"
                chosen = [metrics.get(f"{base}/{m}") for m in ("choice_accuracy", "calibrated_choice_accuracy")]
                w.writerow([base, round(v, 4), metrics.get(f"{base}/chance", ""),
                            *("" if c is None else round(c, 4) for c in chosen)])


def summary_table(metrics: dict[str, float]) -> str:
    """Markdown table; multiple-choice accuracies carry their chance level alongside."""
    lines = ["| metric | value | chance |", "|---|---|---|"]
    for k, v in sorted(metrics.items()):
        if k.endswith("/chance") or k.endswith("/n_items"):
            continue
        chance = metrics.get(k.rsplit("/", 1)[0] + "/chance") if k.endswith("accuracy") else None
        lines.append(f"| {k} | {v:.4f} | {'' if chance is None else f'{chance:.4f}'} |")
    return "\n".join(lines)


def check_model_setting(params: Params) -> None:
    """evaluate.model, when set, must be a trained model (paths.model or a checkpoint step-N dir): fails before any
    work instead of scoring an untrained connector."""
    from desta.models.audio_llm import CONFIG_FILE, is_checkpoint

    if params.evaluate.model is not None and not is_checkpoint(params.evaluate.model):
        raise ValueError(f"evaluate.model={params.evaluate.model}: not a trained model (no {CONFIG_FILE} in it); "
                         f"point it at a directory written by `desta train` ({params.paths.model} or "
                         f"{params.paths.checkpoints}/step-N), or set it to null to use paths.model")


def run_evaluate(params: Params) -> dict[str, Any]:
    from desta.data.remote import use_io_policy
    from desta.io_retry import RetryPolicy

    cfg, out_dir = params.evaluate, Path(params.paths.eval)
    check_model_setting(params)
    use_io_policy(RetryPolicy.from_config(params.io))  # s3:// clips read while scoring
    judge: list = []  # filled below, once the released files are known to be complete
    judge_fn = (lambda prompts: judge[0](prompts)) if any(t in JUDGED for t in cfg.tasks) else None
    tasks = build_tasks(params, judge_fn)
    for task in tasks:
        task.check_files()  # a missing or malformed benchmark file stops the run before any model loads
    if judge_fn is not None:
        from desta.evaluate.judge import make_judge

        judge.append(make_judge(params))
    gens, choosers = make_runners(params)
    metrics: dict[str, float] = {}
    records: dict[str, list[dict]] = {}
    with stage_run(params, "evaluate", cfg) as tracker:
        for task in tasks:
            n_tokens = cfg.max_new_tokens[task.name]
            m, recs = run_task(task, {k: f(n_tokens) for k, f in gens.items()}, cfg.batch_size, cfg.max_items,
                               choosers)
            metrics.update(m)
            records[task.name] = recs
        write_outputs(out_dir, metrics, records)
        tracker.log_metrics(metrics)
        tracker.log_artifact(out_dir, "eval")
    table = summary_table(metrics)
    print(table)
    return {"metrics": str(out_dir / "metrics.json"), "tasks": [t.name for t in tasks], "n_metrics": len(metrics),
            "run_id": tracker.run_id, **{k: v for k, v in metrics.items() if k.count("/") == 1}}
