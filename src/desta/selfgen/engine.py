"""The generators of the data engine: HFEngine (transformers; length-bucketed, left-padded batches with a KV cache)
and VLLMEngine (vLLM, GPU). Both take chat-templated token ids, so they see the same tokens, and both seed sampling
per record (never per batch), so a record's text does not depend on which batch, worker or host wrote it.

Used by `desta generate` (desta/selfgen/shards.py) and benchmarks/selfgen_throughput.py.
Shapes: input_ids / attention_mask [b, t] with left padding (b = batch, t = longest prompt in the bucket); position
ids come from the mask (generate() derives them), so a padded row sees the same positions as the unpadded prompt.
Outputs are cut at the first end-of-turn token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper


@dataclass(frozen=True)
class Decoding:
    """How to decode: greedy (do_sample False) or nucleus sampling; max_new_tokens caps each response."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9


@dataclass(frozen=True)
class Output:
    index: int  # position in the request list
    text: str
    new_tokens: int  # generated tokens up to and including the end-of-turn token


def record_seed(seed: int, record_id: str) -> int:
    """The sampling seed of one record: a 63-bit hash of (generate.seed, record id). It is the same whichever batch,
    shard position, worker or resume writes the record (a batch-position seed restarts on resume)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()[:8], "big") >> 1


def chat_token_ids(tok: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Chat template with the assistant turn opened -> token ids, exactly as the template writes them (a template
    that starts with the BOS token keeps one BOS: the ids are never re-tokenised with special tokens added)."""
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def eos_ids(generation_eos: int | list[int] | None, tok: Any) -> list[int]:
    """End-of-turn ids: the generation config's eos ids plus the tokenizer's eos token."""
    ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    if not ids:
        raise ValueError("generator has no eos token (generation_config.eos_token_id and tokenizer.eos_token)")
    return ids


def cut_at_eos(new: Sequence[int], eos: Sequence[int]) -> tuple[list[int], int]:
    """(tokens before the first end-of-turn token, tokens generated up to and including it)."""
    for j, tok_id in enumerate(new):
        if tok_id in eos:
            return list(new[:j]), j + 1
    return list(new), len(new)


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by (length, index) and cut into batches: similar lengths share a batch, padding stays small.

    Deterministic in the lengths alone, so the same shard always gives the same batches (same outputs).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pending_groups(groups: list[list[int]], skip: frozenset[int]) -> Iterator[list[int]]:
    """The groups (batches, chunks) that still have a request to write. A resumed shard regenerates whole groups as
    the uninterrupted run composed them (done rows included, their outputs dropped), so padding and batch shapes,
    hence the numbers, are the same as if the run had never stopped."""
    return (g for g in groups if not set(g) <= skip)


class RowSampler(LogitsProcessor):
    """Nucleus sampling with one torch.Generator per row: temperature and top-p (transformers' own warpers), then
    one uniform draw per row from the row's generator, turned into a token by inverse-CDF lookup (one batched
    searchsorted; a multinomial call per row was 2x slower per step); returns scores that are 0 at the drawn token
    and -inf elsewhere, so greedy selection (generate(do_sample=False)) takes it. A row's tokens depend on its seed
    and its logits only, never on the other rows of the batch.

    scores: [b, V] float32 -> [b, V]."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device):
        self.warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.softmax(scores, dim=-1).double()  # [b, V]
        u = torch.cat([torch.rand(1, generator=g, device=probs.device, dtype=torch.float64)
                       for g in self.generators])  # [b] in [0, 1)
        cdf = probs.cumsum(dim=-1)  # [b, V]
        picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)  # [b]
        last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(-1)  # last token with mass (rounding guard)
        picked = torch.minimum(picked, last)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picked)), picked] = 0.0
        return out


class HFEngine:
    """A causal LM + tokenizer with a chat template. `generate(prompts, seeds)` yields Outputs batch by batch."""

    def __init__(self, model: Any, tokenizer: Any, decoding: Decoding, batch_size: int):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"tokenizer of {getattr(model, 'name_or_path', 'the generator')} has no chat template; "
                             f"the generator must be an instruction-tuned LLM")
        self.model = model.eval()
        self.tok = tokenizer
        self.decoding = decoding
        self.batch_size = batch_size
        self.eos_ids = eos_ids(model.generation_config.eos_token_id, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def encode(self, messages: list[dict[str, Any]]) -> list[int]:
        return chat_token_ids(self.tok, messages)

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, t - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, t - len(r):] = 1
        return ids, mask  # [b, t], [b, t]

    @torch.inference_mode()
    def generate_ids(self, rows: list[list[int]], seeds: Sequence[int]) -> list[tuple[str, int]]:
        """One padded batch -> [(text, new_tokens)] in row order. seeds[i] seeds row i's sampling (unused greedy)."""
        ids, mask = self._pad_left(rows)
        device = next(self.model.parameters()).device
        d = self.decoding
        kw = {"logits_processor": [RowSampler(seeds, d.temperature, d.top_p, device)]} if d.do_sample else {}
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  max_new_tokens=d.max_new_tokens, do_sample=False, use_cache=True,
                                  eos_token_id=self.eos_ids, pad_token_id=self.pad_id, **kw)
        results = []
        for row in out[:, ids.shape[1]:].tolist():  # [b, new]
            kept, n = cut_at_eos(row, self.eos_ids)
            results.append((self.tok.decode(kept, skip_special_tokens=True).strip(), n))
        return results

    def generate(self, prompts: Sequence[list[int]], seeds: Sequence[int],
                 skip: frozenset[int] = frozenset()) -> Iterator[list[Output]]:
        """Length-bucketed batches over the prompts (token ids); yields each finished batch (callers persist it at
        once). Rows in `skip` are already written: their batches are left out unless another row needs them."""
        for batch in pending_groups(length_buckets([len(p) for p in prompts], self.batch_size), skip):
            texts = self.generate_ids([prompts[i] for i in batch], [seeds[i] for i in batch])
            yield [Output(i, text, n) for i, (text, n) in zip(batch, texts, strict=True) if i not in skip]


class VLLMEngine:
    """The same interface on vLLM (GPU). Prompts go in as token ids (vllm TokensPrompt), one SamplingParams per
    request carrying the record's seed and the same stop ids as HFEngine; outputs are decoded by the same tokenizer
    and cut at the same end-of-turn ids, so both engines turn the same tokens into the same text.

    `llm` is a vllm.LLM (or anything with its generate(prompts, sampling_params, use_tqdm=False)); `make_params`
    builds a request's sampling parameters from keyword arguments (vllm.SamplingParams by default)."""

    def __init__(self, llm: Any, tokenizer: Any, decoding: Decoding, chunk: int, eos: list[int],
                 make_params: Callable[..., Any] | None = None):
        self.llm, self.tok, self.decoding, self.chunk, self.eos_ids = llm, tokenizer, decoding, chunk, eos
        if make_params is None:
            from vllm import SamplingParams as make_params
        self.make_params = make_params

    def encode(self, messages: list[dict[str, Any]]) -> list[int]:
        return chat_token_ids(self.tok, messages)

    def sampling_kwargs(self, seed: int) -> dict[str, Any]:
        """vllm.SamplingParams fields of one request: greedy is temperature 0; sampling keeps temperature and top_p
        (top_k off, as in HFEngine). Detokenisation is ours (detokenize=False)."""
        d = self.decoding
        kw = {"max_tokens": d.max_new_tokens, "stop_token_ids": list(self.eos_ids), "detokenize": False,
              "seed": seed, "temperature": 0.0, "top_p": 1.0}
        return kw | ({"temperature": d.temperature, "top_p": d.top_p} if d.do_sample else {})

    def generate(self, prompts: Sequence[list[int]], seeds: Sequence[int],
                 skip: frozenset[int] = frozenset()) -> Iterator[list[Output]]:
        """Chunks of `chunk` requests in order (vLLM batches inside a chunk; a chunk bounds the loss on a kill)."""
        chunks = [list(range(i, min(i + self.chunk, len(prompts)))) for i in range(0, len(prompts), self.chunk)]
        for chunk in pending_groups(chunks, skip):
            outs = self.llm.generate([{"prompt_token_ids": list(prompts[i])} for i in chunk],
                                     [self.make_params(**self.sampling_kwargs(seeds[i])) for i in chunk],
                                     use_tqdm=False)
            done = []
            for i, o in zip(chunk, outs, strict=True):
                kept, n = cut_at_eos(o.outputs[0].token_ids, self.eos_ids)
                if i not in skip:
                    done.append(Output(i, self.tok.decode(kept, skip_special_tokens=True).strip(), n))
            yield done
