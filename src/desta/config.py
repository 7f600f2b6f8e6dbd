"""Typed, strict settings for every stage, loaded from params.yaml (the single source of settings).

Each stage reads its own section; unknown keys and bad values fail before any work starts, with a message that
names the file, the key and the fix. Used by every `desta <stage>` command, `dvc repro` and the Prefect flows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from desta.config_checks import Layers, cross_field, pydantic_problems, report

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A params file is missing, unreadable or invalid; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


# ----------------------------------------------------------------------------------------------------------- paths
class PathsConfig(_Strict):
    """Where every stage reads and writes (relative to the project root). dvc.yaml interpolates these keys."""

    raw: str  # corpora that stages build locally (the demo corpus) live here
    manifests: str  # prepare -> Parquet shards, summary.json, quarantine.jsonl
    generated: str  # generate -> JSONL shards of DeSTA-AQA records
    validation: str  # validate -> report.json + data docs (HTML)
    checkpoints: str  # train -> periodic checkpoints (resume)
    model: str  # train -> final trainable weights + config (save_pretrained)
    eval: str  # evaluate -> metrics.json, predictions.jsonl, plots
    benchmarks_root: str  # local copies of released benchmark files (MMAU, Speech-IFEval, ...)
    model_cache: str | None  # converted offline models; None -> $DESTA_HOME or ~/.cache/desta/models


# ----------------------------------------------------------------------------------------------------------- model
class LoraConfig(_Strict):
    enabled: bool
    r: int = Field(gt=0)
    alpha: int = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str]


class ModelConfig(_Strict):
    """The composite: frozen Whisper encoder -> Q-Former connector -> frozen instruction-tuned LLM."""

    encoder: str  # model-store reference: pypi:..., a hub id, or a local directory
    llm: str
    target_layers: list[int] | None  # None -> 4 evenly spaced encoder layers (paper)
    prompt_size: int = Field(gt=0)  # learned queries per tapped layer (paper 64)
    qformer_layers: int = Field(gt=0)  # paper 6
    qformer_heads: int | None  # None -> Whisper encoder heads
    qformer_ffn: int | None  # None -> BERT default (3072), capped at 4 x hidden for small encoders
    dtype: Literal["float32", "bfloat16", "float16"]
    lora: LoraConfig
    system_prompt: str
    use_transcription: bool  # feed Whisper's transcription after the audio queries (paper)
    asr_max_new_tokens: int = Field(gt=0)
    max_audio_seconds: float = Field(gt=0)  # Whisper's window
    long_audio: Literal["chunk", "error"]  # > max_audio_seconds: encode 30 s windows, or refuse
    max_chunks: int = Field(gt=0)  # with long_audio=chunk: at most this many 30 s windows (else error)

    @field_validator("target_layers")
    @classmethod
    def _layers_nonneg(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(i < 0 for i in v) or len(set(v)) != len(v)):
            raise ValueError("must be a non-empty list of distinct non-negative layer indices, or null")
        return v


# --------------------------------------------------------------------------------------------------------- prepare
class SourceConfig(_Strict):
    """One corpus to ingest. `kind` picks the recipe in desta.data.corpora; `path` is a directory or s3:// prefix."""

    name: str
    kind: Literal["demo", "manifest", "librispeech", "vctk", "crema_d", "esc50", "clotho", "musiccaps"]  # corpora/
    path: str | None = None  # required for every kind except demo (built under paths.raw/<name>)
    n_clips: int | None = Field(None, gt=0)  # demo: corpus size; others: optional cap (deterministic subset)
    seed: int = 0
    license: str | None = None  # overrides the recipe's default license string
    options: dict[str, Any] = Field(default_factory=dict)  # recipe-specific knobs, validated by the recipe

    @model_validator(mode="after")
    def _path_required(self) -> SourceConfig:
        if self.kind != "demo" and not self.path:
            raise ValueError(f"source '{self.name}' of kind '{self.kind}' needs `path:` (a directory or s3:// prefix)")
        return self


class QualityConfig(_Strict):
    """Thresholds that send a clip to quarantine instead of the manifest."""

    min_duration_s: float = Field(ge=0)
    max_duration_s: float = Field(gt=0)
    silence_rms_dbfs: float  # RMS below this -> silent
    clipped_fraction: float = Field(ge=0, le=1)  # share of samples at full scale -> clipped
    allowed_sample_rates: list[int] = Field(min_length=1)


class PrepareConfig(_Strict):
    sources: list[SourceConfig] = Field(min_length=1)  # at least one corpus; names unique
    valid_fraction: float = Field(ge=0, lt=1)
    test_fraction: float = Field(ge=0, lt=1)
    split_seed: str  # salt of the stable hash split
    target_sample_rate: int
    shard_size: int = Field(gt=0)
    workers: int = Field(ge=1)
    # Ray cluster that checks the audio (desta/data/ray_ingest.py): None -> `workers` local processes; "auto", a
    # "HOST:6379" GCS address or "ray://HOST:10001" (Ray Client, KubeRay). Every node must reach the audio paths.
    ray_address: str | None
    quality: QualityConfig


# -------------------------------------------------------------------------------------------------------- generate
class VLLMConfig(_Strict):
    """vllm.LLM engine arguments for generate.backend: vllm (GPU)."""

    tensor_parallel_size: int = Field(ge=1)  # GPUs per engine (one engine per Ray actor / local worker)
    max_model_len: int | None = Field(gt=0)  # None -> the model's context length (lower it to fit the KV cache)
    gpu_memory_utilization: float = Field(gt=0, le=1)  # share of each GPU vLLM may take (weights + KV cache)


class GenerateConfig(_Strict):
    """`desta generate` (desta/selfgen/generate.py): the backbone LLM answers pool prompts about seed descriptions."""

    # who writes the targets: `llm` (the generator below: the backbone, the paper's self-generation) and/or
    # `templated` (answers filled in from the clip's labels: the paper's ablation baseline; desta/selfgen/templated.py)
    target_sources: list[Literal["llm", "templated"]] = Field(min_length=1)
    generator: str | None  # None -> model.llm (the backbone: the paper's self-generation)
    allow_different_generator: bool  # the paper's ablation: targets written by another LLM
    prompts_per_clip: int = Field(gt=0)
    # prompt category -> relative weight when a clip's categories are drawn ({}: uniform); e.g. favour the
    # categories whose answers depend on the audio (paralinguistic, sound, music) in a small demo run
    category_weights: dict[str, float]
    splits: list[Literal["train", "valid", "test"]] = Field(min_length=1)
    max_clips: int | None = Field(gt=0)  # smoke runs: only the first N clips (by id) of those splits
    seed: int
    max_new_tokens: int = Field(gt=0)
    do_sample: bool
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    batch_size: int = Field(gt=0)  # requests per forward pass (32: 4.7x a one-at-a-time loop on 2 CPU cores)
    shard_size: int = Field(gt=0)  # records per output shard (the unit of resume and of work per worker)
    workers: int = Field(ge=1)  # engines: local processes (GPU i % device_count each) or Ray actors
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available (on the Ray cluster when ray_address is set)
    dtype: Literal["auto", "float32", "bfloat16", "float16"]  # auto: bfloat16 on GPU, float32 on CPU
    backend: Literal["hf", "vllm"]
    vllm: VLLMConfig
    # Ray cluster for the engines (desta/selfgen/ray_run.py): None -> local processes; "auto", "HOST:6379" or
    # "ray://HOST:10001" (Ray Client, KubeRay). Same records as the local path; docs/pipeline.md "Scaling out".
    ray_address: str | None
    ray_cpus_per_worker: float = Field(gt=0)  # CPUs each Ray actor reserves (its torch threads on a CPU cluster)
    system_prompt: str
    strip_echo: bool  # cut recited seed-description spans/attribute blocks from responses
    progress: bool  # tqdm bar with records/s, tokens/s and ETA
    import_aqa: str | None  # path to released DeSTA-AQA5M jsonl files to import instead of generating

    @field_validator("category_weights")
    @classmethod
    def _positive_weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not w > 0}
        if bad:
            raise ValueError(f"weights must be > 0 (drop a category from the pool instead): {bad}")
        return v


# -------------------------------------------------------------------------------------------------------- validate
class ValidateConfig(_Strict):
    """`desta validate` (desta/validate/gate.py): Great Expectations suites; critical failures stop the pipeline."""

    min_duration_s: float = Field(ge=0)
    max_duration_s: float = Field(gt=0)
    sample_rates: list[int] | None  # original files' rates; None -> prepare.quality.allowed_sample_rates
    response_min_chars: int = Field(ge=1)  # "A man." and "Siren." are whole answers; "" or "." are not
    response_max_chars: int = Field(gt=1)
    max_leak_fraction: float = Field(ge=0, le=1)  # responses quoting seed timestamps/"metadata": critical above
    min_category_share: float = Field(ge=0, le=1)  # each prompt category must cover this share (warning)
    check_audio_exists: bool
    require_generated: bool  # a missing generated set is a critical failure (False: manifests only)
    fail_on_warning: bool


# ----------------------------------------------------------------------------------------------------------- train
class TrainConfig(_Strict):
    """`desta train` (desta/train/recipe.py). Paper values (8B, 8 GPUs): lr 1e-4, betas (0.9, 0.98), weight decay
    0.01, 5000 warmup steps, clip 1.0, bf16, 5 epochs. Defaults here are sized for the CPU demo (see docs/training.md):
    a higher connector lr (3e-4; at 1e-3 and above the connector collapses into a fixed prompt that ignores the
    audio) and a short warmup so the tiny run learns within minutes."""

    strategy: Literal["torch", "deepspeed"]  # deepspeed: ZeRO config generated by desta/train/deepspeed.py
    zero_stage: Literal[0, 1, 2, 3]
    offload_optimizer: bool  # ZeRO: optimizer states on CPU (DeepSpeedCPUAdam, JIT-compiled once)
    precision: Literal["fp32", "bf16", "fp16"]  # paper bf16 (GPU)
    seed: int
    # bit-identical reruns on a GPU too: deterministic kernels (torch.use_deterministic_algorithms, cuDNN,
    # CUBLAS_WORKSPACE_CONFIG); slower, and an op without a deterministic kernel stops the run naming it. CPU runs
    # are bit-identical without it.
    deterministic: bool
    max_steps: int = Field(gt=0)  # optimizer steps (the cosine schedule's length)
    micro_batch_size: int = Field(gt=0)  # per rank
    grad_accum: int = Field(gt=0)
    lr: float = Field(gt=0)  # paper 1e-4 (8B, 5M samples); 3e-4 for the tiny CPU demo
    betas: tuple[float, float]
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)  # paper: 5000 at full scale
    lr_schedule: Literal["cosine", "linear", "constant"]  # after warmup
    min_lr_ratio: float = Field(ge=0, le=1)  # decay floor as a fraction of lr
    grad_clip: float = Field(gt=0)
    eval_every: int = Field(gt=0)  # validation loss every N optimizer steps (and at step 0 and the end)
    max_val_batches: int | None = Field(gt=0)  # cap validation cost (None: the whole valid split)
    val_shuffled_audio: bool  # also validate with audio swapped between records (`audio_gap` > 0: uses audio)
    save_every: int = Field(gt=0)  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = Field(ge=1)
    num_workers: int = Field(ge=0)  # DataLoader worker processes (audio decode + features + tokenization)
    bucket_by_length: bool
    max_seq_len: int = Field(gt=0)  # records whose estimated length exceeds this are dropped (counted)
    log_every: int = Field(gt=0)  # console log line every N steps (the progress bar and MLflow get every step)
    feature_cache: bool  # cache frozen-encoder outputs per clip (deterministic) when the model supports it
    feature_cache_max_mb: int = Field(ge=0)  # per rank; clips beyond it are re-encoded each time they come
    progress: bool  # tqdm progress bar on rank 0


# -------------------------------------------------------------------------------------------------------- evaluate
class JudgeConfig(_Strict):
    """LLM judge for SAKURA, Dynamic-SUPERB and Speech-IFEval CoT (desta/evaluate/judge.py). Official judges are
    GPT-4o; a local judge's scores are not comparable with published numbers."""

    kind: Literal["local", "openai"]
    model: str  # local: model-store ref; openai: the endpoint's model name
    base_url: str | None  # OpenAI-compatible endpoint (openai kind), e.g. https://api.openai.com/v1
    api_key_env: str  # the key is read from this environment variable, never logged
    temperature: float = Field(ge=0)  # SAKURA's official judge: temperature 0, top_p 0.9
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(gt=0)  # local judge


TaskName = Literal["heldout", "retention", "mmau", "speech_ifeval", "voicebench", "sakura", "dynamic_superb"]


class EvaluateConfig(_Strict):
    """`desta evaluate` (desta/evaluate/run.py): benchmark tasks -> metrics.json, predictions, MLflow."""

    tasks: list[TaskName] = Field(min_length=1)
    model: str | None  # trained model dir; None -> paths.model (an untrained connector if it is absent)
    batch_size: int = Field(gt=0)
    # answer-length cap per task (every task in `tasks` needs one; the benchmarks' official caps by default)
    max_new_tokens: dict[TaskName, int]
    max_items: int | None = Field(gt=0)  # per task cap (smoke runs)
    seed: int
    heldout_max_per_attribute: int | None = Field(gt=0)  # MCQ items per attribute (None: all test clips)
    choice_scoring: bool  # also rank MCQ options by likelihood (`choice_accuracy`, `calibrated_choice_accuracy`)
    heldout_open_questions: bool  # also ask each MCQ question without options (`open_accuracy`)
    heldout_asr_items: int = Field(ge=0)
    heldout_ifeval_items: int = Field(ge=0)
    retention_items: int | None = Field(gt=0)  # text-only instructions (each answered by model and backbone)
    voicebench_subsets: list[Literal["ifeval", "advbench", "openbookqa", "mmsu", "bbh"]] = Field(min_length=1)
    sakura_tracks: list[Literal["Animal", "Emotion", "Gender", "Language"]] = Field(min_length=1)
    dynamic_superb_tasks: list[str] | None  # folder names under benchmarks_root/dynamic_superb; None: all
    judge: JudgeConfig

    @field_validator("max_new_tokens")
    @classmethod
    def _positive_caps(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if n <= 0}
        if bad:
            raise ValueError(f"every cap must be > 0, got {bad}")
        return v

    @model_validator(mode="after")
    def _cap_per_task(self) -> EvaluateConfig:
        missing = [t for t in self.tasks if t not in self.max_new_tokens]
        if missing:
            raise ValueError(f"evaluate.max_new_tokens has no cap for task(s) {missing}; add `<task>: N` under "
                             "evaluate.max_new_tokens")
        return self


# -------------------------------------------------------------------------------------------------------- tracking
class TrackingConfig(_Strict):
    enabled: bool
    tracking_uri: str | None  # None -> $MLFLOW_TRACKING_URI or sqlite:///mlflow.db (embedded)
    experiment: str
    artifact_location: str | None  # e.g. s3://mlflow-artifacts/desta (new experiments only)
    registered_model: str
    champion_metric: str
    champion_greater_is_better: bool
    s3_endpoint_url: str | None  # None -> $AWS_ENDPOINT_URL / $MLFLOW_S3_ENDPOINT_URL; credentials: env only
    # register: the served pyfunc also reads `audio` given as a file path, only under this server-side folder
    # (regular files inside it); None: base64 audio bytes only
    serve_audio_root: str | None


class PipelineConfig(_Strict):
    """Orchestration (flows/retrain.py, flows/deploy.py, `python -m desta.pipeline`; docs/pipeline.md)."""

    cron: str  # scheduled end-to-end retraining (Sundays 03:00)
    deployment: str
    io_retries: int = Field(ge=0)  # retries of the I/O stages (prepare, generate, register) in the flow
    io_retry_delay_s: float = Field(ge=0)  # backoff: delay * 2**k
    dvc_remote: str | None  # e.g. s3://desta-dvc/cache; endpoint from tracking.s3_endpoint_url/$AWS_ENDPOINT_URL


class IOConfig(_Strict):
    """Transient I/O of every stage (S3 sources, MLflow, the judge endpoint; desta/io_retry.py): a failed request is
    retried after waits doubling from `backoff_s` (capped at `max_wait_s`), at most `retries` times, then the stage
    fails in one line naming the endpoint. During training an MLflow outage only delays the metrics (queued, sent
    when the server answers again, else kept in .desta/tracking-outbox/ and sent by the next stage)."""

    retries: int = Field(ge=0)  # after the first attempt
    backoff_s: float = Field(ge=0)
    max_wait_s: float = Field(ge=0)
    timeout_s: float = Field(gt=0)  # connect/read time-out of one S3 or MLflow request
    judge_timeout_s: float = Field(gt=0)  # one judge request (an LLM endpoint answers slowly)


class Params(_Strict):
    paths: PathsConfig
    model: ModelConfig
    prepare: PrepareConfig
    generate: GenerateConfig
    validate_: ValidateConfig = Field(alias="validate")
    train: TrainConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    pipeline: PipelineConfig
    io: IOConfig

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    def model_cache_dir(self) -> Path:
        """Where converted models live: paths.model_cache, else $DESTA_HOME, else the user's cache dir."""
        return model_cache_dir(self.paths.model_cache)


def model_cache_dir(configured: str | None = None) -> Path:
    """paths.model_cache when set, else $DESTA_HOME/models, else ~/.cache/desta/models (XDG_CACHE_HOME honoured)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("DESTA_HOME"):
        return Path(os.environ["DESTA_HOME"]).expanduser() / "models"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "desta" / "models"


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """`["train.lr=3e-4", "model.lora.enabled=true"]` -> nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ParamsError(f"override -S {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override -S {item!r}: {p} is set twice, once as a value and once as a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ParamsError(f"override -S {item!r}: the value is not valid YAML ({err.problem})") from None
    return nested


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def params_from_dict(raw: dict[str, Any], source: str = "<dict>", layers: Layers | None = None) -> Params:
    """Validate merged settings; `layers` (the file, then profiles / merges, then each `-S`) let an error name
    where the bad value was set. Cross-field checks run after the per-key ones."""
    layers = layers or [(source, raw)]
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(report(layers, pydantic_problems(err))) from None
    problems = cross_field(params, raw)
    if problems:
        raise ParamsError(report(layers, problems))
    return params


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None,
                merge: dict[str, Any] | None = None, merge_source: str = "merged settings") -> Params:
    """Read and validate the whole params file (every section) so a bad key fails before any stage starts.
    `merge` (a nested dict, e.g. {"train": {"max_steps": 4}}; named `merge_source` in errors) is deep-merged before
    the `-S` overrides. An error names where the bad value came from: the file, the merge or the `-S` item."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not a text file (byte {err.start} is not UTF-8); a params file is YAML text like "
                          "the repository's params.yaml") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections (paths, model, prepare, ...)")
    layers: Layers = [(str(path), raw), (merge_source, merge or {})]
    layers += [(f"-S {item}", parse_overrides([item])) for item in overrides or []]
    merged = deep_merge(deep_merge(raw, merge or {}), parse_overrides(overrides))
    return params_from_dict(merged, str(path), layers)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings -> {"train.lr": 1e-4, ...} (for MLflow params and DVC per-key params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
