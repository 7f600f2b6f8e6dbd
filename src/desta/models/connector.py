"""The DeSTA2.5 Q-Former connector: tapped Whisper layers -> `prompt_size` audio embeddings in the LLM's width.

Built by `DeSTA25AudioModel` (desta/models/audio_llm.py); trained by `desta train`. Uses transformers' BertEncoder
(decoder mode with cross-attention), never a vendored copy. Shapes: n = audio windows, L = tapped layers,
T = encoder frames (<= 1500), P = prompt_size, d = encoder width, D = LLM width.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder


def default_target_layers(n_layers: int) -> list[int]:
    """4 evenly spaced encoder layers (paper): 32 -> [7, 15, 23, 31], 12 -> [2, 5, 8, 11], 4 -> [0, 1, 2, 3]."""
    if n_layers < 4:
        return list(range(n_layers))
    return [int((i + 1) * n_layers / 4) - 1 for i in range(4)]


def qformer_config(width: int, layers: int, heads: int, ffn: int | None) -> BertConfig:
    """BERT-style stack in decoder mode with cross-attention (the official "qformer_1"), width = encoder width."""
    if width % heads:
        raise ValueError(f"model.qformer_heads={heads} must divide the encoder width {width}; set model.qformer_heads "
                         "in params.yaml to a divisor (or null for the encoder's own head count)")
    cfg = BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn or min(3072, 4 * width), is_decoder=True, add_cross_attention=True)
    cfg._attn_implementation = "sdpa"
    return cfg


class QFormerConnector(nn.Module):
    """Per-layer learned queries -> shared Q-Former (self-attn among queries, cross-attn to that layer's frames) ->
    per-query softmax mixture over layers -> LayerNorm -> Linear(d -> D)."""

    def __init__(self, encoder_dim: int, llm_dim: int, n_layers: int, prompt_size: int, qformer: BertConfig):
        super().__init__()
        self.n_layers, self.prompt_size = n_layers, prompt_size
        self.queries = nn.Parameter(torch.randn(n_layers, prompt_size, encoder_dim) * qformer.initializer_range)
        self.qformer = BertEncoder(qformer)
        self.qformer.apply(self._init_bert)
        self.layer_weights = nn.Parameter(torch.zeros(prompt_size, n_layers))  # softmax over layers: uniform at init
        self.norm = nn.LayerNorm(encoder_dim)
        self.proj = nn.Linear(encoder_dim, llm_dim)

    def _init_bert(self, module: nn.Module) -> None:
        std = self.qformer.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """hidden [n, L, T, d] tapped encoder states; frames [n] valid frames per window -> [n, P, D].

        Cross-attention sees only each window's valid frames (the official code attends to the 30 s padding too)."""
        n, n_layers, t, d = hidden.shape
        if n_layers != self.n_layers:
            raise ValueError(f"connector built for {self.n_layers} tapped layers, got hidden states for {n_layers}")
        valid = torch.arange(t, device=hidden.device)[None, :] < frames.to(hidden.device)[:, None]  # [n, T]
        mask = torch.zeros(n, 1, 1, t, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~valid[:, None, None, :], torch.finfo(hidden.dtype).min)
        mask = mask.repeat_interleave(n_layers, dim=0)  # [n*L, 1, 1, T]
        queries = self.queries.unsqueeze(0).expand(n, -1, -1, -1).reshape(n * n_layers, self.prompt_size, d)
        out = self.qformer(hidden_states=queries, encoder_hidden_states=hidden.reshape(n * n_layers, t, d),
                           encoder_attention_mask=mask, is_causal=False).last_hidden_state  # [n*L, P, d]
        out = out.view(n, n_layers, self.prompt_size, d)
        weights = self.layer_weights.softmax(dim=-1)  # [P, L]
        mixed = torch.einsum("nlpd,pl->npd", out, weights)  # [n, P, d]
        return self.proj(self.norm(mixed))
