"""Pluggable LLM judge for the judge-scored benchmarks of `desta evaluate` (SAKURA, Dynamic-SUPERB, Speech-IFEval CoT).

A judge is any callable `judge_fn(list of (system, user) prompts) -> list[str]`. `make_judge(params)` builds one from
params.evaluate.judge: `local` (an instruction-tuned LLM from the model store, greedy) or `openai` (any
OpenAI-compatible /chat/completions endpoint through judge_client.Endpoint: retries with backoff, the key read
from the environment variable named by `api_key_env` and never logged). The prompts and verdict parsing of each
benchmark live in desta/evaluate/official/. The official judges are gpt-4o-2024-11-20 (SAKURA, Speech-IFEval) and
GPT-4o (Dynamic-SUPERB); scores from a small local judge are NOT comparable with published numbers.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

from desta.config import JudgeConfig, Params
from desta.evaluate.judge_client import BACKOFF_S, MAX_RETRIES, TIMEOUT_S, Endpoint, JudgeEndpointError

JudgeFn = Callable[[list[tuple[str, str]]], list[str]]

def chat_generate_fn(model, tok, max_new_tokens: int, batch_size: int = 8) -> Callable[[list[list[dict]]], list[str]]:
    """Greedy, batched (left-padded) chat completion with a text-only causal LM: conversations -> answers.
    Used for the local judge and for the backbone's own answers (retention, Speech-IFEval reference)."""
    import torch

    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    @torch.no_grad()
    def generate(conversations: list[list[dict]]) -> list[str]:
        out: list[str] = []
        device = next(model.parameters()).device
        for start in range(0, len(conversations), batch_size):
            chats = [[{"role": m["role"], "content": m["content"]} for m in c]
                     for c in conversations[start:start + batch_size]]
            texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            out += [t.strip() for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
        return out

    return generate


def local_judge(ref: str, cache_dir, max_new_tokens: int = 64, batch_size: int = 8) -> JudgeFn:
    """A model-store LLM as judge (greedy)."""
    from desta.models.store import load_llm

    model, tok = load_llm(ref, cache_dir)
    generate = chat_generate_fn(model, tok, max_new_tokens, batch_size)
    return lambda prompts: generate([[{"role": "system", "content": s}, {"role": "user", "content": u}]
                                     for s, u in prompts])


def openai_judge(cfg: JudgeConfig, timeout_s: float = TIMEOUT_S, max_retries: int = MAX_RETRIES,
                 backoff_s: float = BACKOFF_S) -> JudgeFn:
    """POST {base_url}/chat/completions per prompt with params.evaluate.judge's model, temperature and top_p (SAKURA's
    official request: gpt-4o-2024-11-20, 0.0, 0.9, no max_tokens). Retries 408/409/425/429/5xx answers, time-outs
    and dropped connections with exponential backoff (honouring Retry-After), then fails naming the endpoint, the
    model and the last error; the key is sent only in the Authorization header and redacted from every message."""
    if not cfg.base_url:
        raise ValueError("params.evaluate.judge.base_url is null; set it to the endpoint (e.g. https://api.openai.com/v1)"
                         " or use judge.kind: local")
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ValueError(f"params.evaluate.judge: the environment variable {cfg.api_key_env} is empty; export the "
                         "endpoint's API key there (it is never written to params or logs)")
    endpoint = Endpoint(cfg.base_url.rstrip("/") + "/chat/completions", cfg.model, key, timeout_s, max_retries,
                        backoff_s)

    def call(system: str, user: str) -> str:
        body = {"model": cfg.model, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        reply = endpoint.post(body)
        try:
            return reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeEndpointError(f"judge endpoint {endpoint.url} (model {cfg.model}) answered without "
                                     f"choices[0].message.content: {endpoint.redact(json.dumps(reply)[:300])}; "
                                     "is base_url an OpenAI-compatible /v1 root?") from None

    return lambda prompts: [call(s, u) for s, u in prompts]


def make_judge(params: Params) -> JudgeFn:
    """The configured judge. The openai kind is checked now (base_url, key); a local judge LLM loads on first use,
    so a missing benchmark file is reported before any model is loaded."""
    cfg = params.evaluate.judge
    if cfg.kind == "openai":  # retries and time-outs from params `io:`
        return openai_judge(cfg, params.io.judge_timeout_s, params.io.retries, params.io.backoff_s)
    load = functools.cache(lambda: local_judge(cfg.model, params.model_cache_dir(), cfg.max_new_tokens,
                                               params.evaluate.batch_size))
    return lambda prompts: load()(prompts)
