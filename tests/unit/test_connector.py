"""Q-Former connector on tiny random configs: shapes, frame masking, non-causal queries, layer mixture, errors.

Run: .venv/bin/pytest tests/unit/test_connector.py
"""

from __future__ import annotations

import pytest
import torch

from desta.models.connector import QFormerConnector, default_target_layers, qformer_config

D_ENC, D_LLM, LAYERS, P = 16, 24, 3, 5


@pytest.fixture()
def connector() -> QFormerConnector:
    torch.manual_seed(0)
    return QFormerConnector(D_ENC, D_LLM, LAYERS, P, qformer_config(D_ENC, layers=2, heads=4, ffn=32)).eval()


@pytest.mark.parametrize(("n", "expected"), [(32, [7, 15, 23, 31]), (24, [5, 11, 17, 23]), (12, [2, 5, 8, 11]),
                                             (4, [0, 1, 2, 3]), (6, [0, 2, 3, 5]), (2, [0, 1])])
def test_default_target_layers_match_the_paper(n, expected):
    assert default_target_layers(n) == expected


def test_output_shape(connector):
    hidden = torch.randn(2, LAYERS, 10, D_ENC)
    out = connector(hidden, torch.tensor([10, 4]))
    assert out.shape == (2, P, D_LLM)
    assert torch.isfinite(out).all()


def test_padded_frames_are_ignored_and_valid_frames_are_not(connector):
    hidden = torch.randn(1, LAYERS, 10, D_ENC)
    frames = torch.tensor([6])
    base = connector(hidden, frames)
    padded_changed = hidden.clone()
    padded_changed[:, :, 6:] = torch.randn(1, LAYERS, 4, D_ENC) * 100
    torch.testing.assert_close(connector(padded_changed, frames), base)
    valid_changed = hidden.clone()
    valid_changed[:, :, 2] += 5
    assert not torch.allclose(connector(valid_changed, frames), base)


def test_queries_attend_to_each_other_bidirectionally(connector):
    hidden = torch.randn(1, LAYERS, 8, D_ENC)
    frames = torch.tensor([8])
    base = connector(hidden, frames)
    with torch.no_grad():
        connector.queries[:, -1] += 1.0  # the last query: a causal stack would leave query 0 unchanged
    assert not torch.allclose(connector(hidden, frames)[:, 0], base[:, 0])


def test_every_parameter_gets_a_gradient(connector):
    connector.train()
    out = connector(torch.randn(2, LAYERS, 7, D_ENC), torch.tensor([7, 3]))
    out.pow(2).mean().backward()
    missing = [n for n, p in connector.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_layer_mixture_starts_uniform_and_is_per_query(connector):
    assert connector.layer_weights.shape == (P, LAYERS)
    torch.testing.assert_close(connector.layer_weights.softmax(-1), torch.full((P, LAYERS), 1 / LAYERS))


def test_wrong_number_of_layers_and_bad_heads_are_explained(connector):
    with pytest.raises(ValueError, match="3 tapped layers"):
        connector(torch.randn(1, 2, 5, D_ENC), torch.tensor([5]))
    with pytest.raises(ValueError, match="qformer_heads=5 must divide the encoder width 16"):
        qformer_config(16, layers=1, heads=5, ffn=None)


def test_default_ffn_is_capped_for_small_encoders():
    assert qformer_config(384, 2, 6, None).intermediate_size == 1536
    assert qformer_config(1280, 2, 20, None).intermediate_size == 3072
