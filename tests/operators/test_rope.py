"""RoPE frequencies, including Llama-3 and linear scaling, equal transformers' for the same config."""
import pytest
import torch

from operators.tensor_ops import apply_rope, rope_cos_sin, rope_inv_freq

SCALINGS = [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
]


@pytest.mark.parametrize("scaling", SCALINGS)
def test_inv_freq_matches_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": "default", "rope_theta": 500000.0} | (scaling or {})
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, max_position_embeddings=131072,
                         rope_parameters=params)
    if scaling is None:
        expected = 1.0 / (500000.0 ** (torch.arange(0, 64, 2).float() / 64))
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config)
    ours = rope_inv_freq(64, 500000.0, scaling)
    torch.testing.assert_close(ours, expected.float(), rtol=1e-5, atol=1e-9)


def test_rotation_preserves_norm_and_position_zero_is_identity():
    x = torch.randn(5, 3, 16)
    cos, sin = rope_cos_sin(torch.arange(5), rope_inv_freq(16, 10000.0))
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[0], x[0])
