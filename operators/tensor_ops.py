"""Reference semantics of the model's tensor operators (torch, fp32 ground truth).

Every faster implementation (TVM kernels in codegen/, batched paths in runtime/)
is tested against these functions. They favour clarity over speed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def embedding(token_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """token_ids [T] int64, table [V, H] -> [T, H]."""
    return table[token_ids]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [T, H], weight [H] -> [T, H]; computed in fp32 like HF Llama, then cast to out_dtype
    (default: x's) — a bf16 linear takes the normalized row in bf16."""
    x32 = x.float()
    variance = x32.pow(2).mean(-1, keepdim=True)
    out = (x32 * torch.rsqrt(variance + eps)).to(x.dtype) * weight
    return out if out_dtype is None else out.to(out_dtype)


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The residual add and the next norm: x += y in place (x is the fp32 residual stream [T, H]),
    then rms_norm(x) in out_dtype."""
    x.add_(y)
    return rms_norm(x, weight, eps, out_dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, K], weight [N, K] (HF layout) -> [T, N]."""
    return F.linear(x, weight, bias)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: silu(gate) * up, both [T, F], computed in fp32 and rounded once to
    the inputs' dtype (bf16 in, bf16 out)."""
    if gate.dtype == torch.float32:
        return F.silu(gate) * up
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies [head_dim/2], with Llama-3 style scaling when configured."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = scaling["factor"]
        low_freq_factor = scaling.get("low_freq_factor", 1.0)
        high_freq_factor = scaling.get("high_freq_factor", 4.0)
        old_context = scaling.get("original_max_position_embeddings", 8192)
        low_freq_wavelen = old_context / low_freq_factor
        high_freq_wavelen = old_context / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    elif scaling and scaling.get("rope_type", scaling.get("type")) == "linear":
        inv_freq = inv_freq / scaling["factor"]
    return inv_freq.float()


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T] int64 -> cos, sin [T, head_dim] (HF rotate-half layout)."""
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] (fp32, or bf16 widened exactly); cos/sin [T, D] -> fp32. Rotates halves (HF convention)."""
    x = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
             num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused projection qkv [T, (Hq + 2 Hkv) D] -> RoPE'd q [T, Hq, D], RoPE'd k and v [T, Hkv, D]
    (fp32; v in qkv's dtype)."""
    num_tokens = qkv.shape[0]
    head_dim = qkv.shape[1] // (num_heads + 2 * num_kv_heads)
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q = qkv[:, :q_size].reshape(num_tokens, num_heads, head_dim)
    k = qkv[:, q_size : q_size + kv_size].reshape(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, q_size + kv_size :].reshape(num_tokens, num_kv_heads, head_dim)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int) -> torch.Tensor:
    """Grouped-query attention of one sequence.

    q [T, Hq, D] are the query tokens at positions q_start..q_start+T-1;
    k, v [S, Hkv, D] hold every position 0..S-1 (S = q_start + T).
    Returns [T, Hq, D].
    """
    num_q_heads, num_kv_heads = q.shape[1], k.shape[1]
    group = num_q_heads // num_kv_heads
    k = k.repeat_interleave(group, dim=1)  # [S, Hq, D]
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(q.shape[-1])  # [Hq, T, S]
    query_pos = torch.arange(q_start, q_start + q.shape[0])[:, None]
    key_pos = torch.arange(k.shape[0])[None, :]
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.einsum("hts,shd->thd", probs, v)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
) -> torch.Tensor:
    """Decode attention (one query token per sequence) reading K/V through block tables.

    q [B, Hq, D]; k_cache, v_cache [num_blocks, block_size, Hkv, D];
    block_tables [B, max_blocks] int32 (physical block of each logical block);
    context_lens [B] int32 (tokens in each sequence, the new one included).
    Returns [B, Hq, D].
    """
    block_size = k_cache.shape[1]
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        n = int(context_lens[b])
        blocks = block_tables[b, : (n + block_size - 1) // block_size].long()
        k = k_cache[blocks].reshape(-1, *k_cache.shape[2:])[:n]  # [n, Hkv, D]
        v = v_cache[blocks].reshape(-1, *v_cache.shape[2:])[:n]
        out[b] = causal_attention(q[b : b + 1], k, v, q_start=n - 1)[0]
    return out


def logits(hidden: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
    """hidden [T, H], lm_head [V, H] -> [T, V]."""
    return F.linear(hidden, lm_head)


def argmax_rows(logits: torch.Tensor, excluded) -> list[int]:
    """Each row's argmax [N, V] -> N ids (the lowest on ties, NaN above all, as torch.argmax), leaving out that
    row's excluded ids (a collection of token ids per row: greedy sampling with ignore_eos leaves out the EOS
    tokens). Through numpy's argmax, ~10x torch's over a 49,152-wide row (4 vs 42 us, one thread); a row's ids
    are masked only when its argmax is one of them: otherwise that argmax is already the answer."""
    values = logits.detach().float().contiguous().numpy()
    best = values.argmax(axis=-1).tolist()
    for row, ids in enumerate(excluded):
        if ids and best[row] in ids:
            masked = values[row].copy()
            masked[sorted(ids)] = float("-inf")
            best[row] = int(masked.argmax())
    return best
