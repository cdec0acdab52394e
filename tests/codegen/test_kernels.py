"""Every kernel against its operators/ reference on fresh random inputs (the quantized
matmuls: tests/codegen/test_quant_kernels.py).

Outputs are filled with NaN before each run, so an element the kernel fails to write
fails the comparison. Tolerances (fp32 throughout):
  - reductions (matmuls, norms, attention): |err| <= 1e-5 * max(1, max|ref|) + 1e-5 * |ref|,
    the reference and the kernel only differ in summation order;
  - silu_mul, rope_qkv: rtol 1e-5 (the kernel's own exp is within 1e-7 relative); values copied
    into the KV cache are exact.
"""
import pytest
import torch

from codegen.build import get_kernel
from codegen.kernels import bf16_matmul
from codegen.kernels.paged_attention import CHUNK_TOKENS
from codegen.target import host_target, level
from operators import tensor_ops as ref


def poisoned(*shape):
    return torch.full(shape, float("nan"))


def assert_fp32_close(out, expected):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


MATMUL_SHAPES = [(64, 96, 1), (37, 160, 3), (96, 576, 5)]  # (N, K, T)


@pytest.mark.parametrize("n,k,tokens", MATMUL_SHAPES + [(5, 161, 2), (33, 17, 4)])
def test_dense_matmul(n, k, tokens, target=None):
    weight, x = torch.randn(n, k), torch.randn(tokens, k)
    out = poisoned(tokens, n)
    get_kernel("dense_matmul", {"n": n, "k": k}, target)(x, weight, out)
    assert_fp32_close(out, ref.linear(x, weight))


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def assert_close_in(dtype: str, out, expected):
    """fp32: see the module docstring. bf16 outputs: both sides round the same fp32 value
    once, so they may differ by one bf16 step (2^-8 relative) where fp32 summation order
    moved it across a rounding boundary."""
    if dtype == "fp32":
        assert_fp32_close(out, expected)
    else:
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected.float(), rtol=2 ** -8, atol=1e-6)


@pytest.mark.parametrize("out_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("tokens,hidden", [(1, 576), (5, 77), (3, 16), (70, 40)])  # 70: rows on threads
def test_rms_norm(tokens, hidden, out_dtype, target=None):
    x, weight = torch.randn(tokens, hidden) * 3, torch.randn(hidden)
    out = poisoned(tokens, hidden).to(DTYPES[out_dtype])
    get_kernel("rms_norm", {"hidden": hidden, "eps": 1e-5, "out_dtype": out_dtype}, target)(x, weight, out)
    assert_close_in(out_dtype, out, ref.rms_norm(x, weight, 1e-5, DTYPES[out_dtype]))


@pytest.mark.parametrize("y_dtype,out_dtype", [("fp32", "fp32"), ("bf16", "bf16"), ("bf16", "fp32")])
@pytest.mark.parametrize("tokens,hidden", [(1, 576), (5, 77), (3, 16), (70, 40)])  # 70: rows on threads
def test_add_rms_norm_updates_the_residual_in_place(tokens, hidden, y_dtype, out_dtype, target=None):
    x, weight = torch.randn(tokens, hidden) * 3, torch.randn(hidden)
    y = torch.randn(tokens, hidden).to(DTYPES[y_dtype])
    want_x = x.clone()
    want = ref.add_rms_norm(want_x, y, weight, 1e-5, DTYPES[out_dtype])
    out = poisoned(tokens, hidden).to(DTYPES[out_dtype])
    get_kernel("add_rms_norm", {"hidden": hidden, "eps": 1e-5, "y_dtype": y_dtype, "out_dtype": out_dtype},
               target)(x, y, weight, out)
    assert_fp32_close(x, want_x)
    assert_close_in(out_dtype, out, want)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("tokens,ffn", [(1, 1536), (3, 37), (2, 16), (70, 40)])  # 70: rows on threads
def test_silu_mul_reads_strided_halves(tokens, ffn, dtype, target=None):
    gate_up = (torch.randn(tokens, 2 * ffn) * 6).to(DTYPES[dtype])  # the fused gate|up output; halves are strided views
    gate, up = gate_up[:, :ffn], gate_up[:, ffn:]
    out = poisoned(tokens, ffn).to(DTYPES[dtype])
    get_kernel("silu_mul", {"ffn": ffn, "dtype": dtype}, target)(gate, up, out)
    if dtype == "fp32":
        torch.testing.assert_close(out, ref.silu_mul(gate, up), rtol=1e-5, atol=1e-6)
    else:
        assert_close_in(dtype, out, ref.silu_mul(gate, up))


@pytest.mark.parametrize("x_dtype,kv_dtype", [("fp32", "fp32"), ("fp32", "bf16"), ("bf16", "bf16")])
@pytest.mark.parametrize("tokens,heads,kv_heads,head_dim,block_size", [(1, 9, 3, 64, 16), (7, 3, 1, 10, 4),
                                                                        (4, 2, 2, 128, 1), (70, 4, 2, 16, 8)])
def test_rope_qkv_rotates_q_and_writes_k_v_into_their_slots(tokens, heads, kv_heads, head_dim, block_size, x_dtype,
                                                             kv_dtype, target=None):
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim).to(DTYPES[x_dtype])
    positions = torch.randint(0, 4000, (tokens,))
    cos, sin = ref.rope_cos_sin(positions, ref.rope_inv_freq(head_dim, 100000.0))
    num_blocks = tokens + 3
    slots = torch.randperm(num_blocks * block_size)[:tokens].to(torch.int32)  # distinct, scattered
    blocks, offsets = slots // block_size, slots % block_size
    k_cache = torch.full((num_blocks, kv_heads, head_dim, block_size), 7.0).to(DTYPES[kv_dtype])
    v_cache = torch.full((num_blocks, kv_heads, block_size, head_dim), 7.0).to(DTYPES[kv_dtype])
    q = poisoned(tokens, heads, head_dim)
    get_kernel("rope_qkv", {"num_q_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim,
                            "block_size": block_size, "x_dtype": x_dtype, "kv_dtype": kv_dtype}, target)(
        qkv, cos, sin, blocks, offsets, k_cache, v_cache, q)
    want_q, want_k, want_v = ref.rope_qkv(qkv, cos, sin, heads, kv_heads)
    torch.testing.assert_close(q, want_q, rtol=1e-5, atol=1e-5)
    got_k = k_cache.permute(0, 3, 1, 2)[blocks.long(), offsets.long()]  # [T, Hkv, D]
    got_v = v_cache.permute(0, 2, 1, 3)[blocks.long(), offsets.long()]
    assert_close_in(kv_dtype, got_k, want_k)
    torch.testing.assert_close(got_v.float(), want_v.to(DTYPES[kv_dtype]).float(), rtol=0, atol=0)
    written = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    written[blocks.long(), offsets.long()] = True  # every other slot keeps its old contents
    assert (k_cache.permute(0, 3, 1, 2)[~written] == 7).all() and (v_cache.permute(0, 2, 1, 3)[~written] == 7).all()


ATTENTION_SHAPES = [(9, 3, 64, 16), (4, 4, 32, 8), (6, 2, 16, 5)]  # (Hq, Hkv, D, block_size)
KV_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def attention_kernel(hq, hkv, d, bs, kv_dtype="fp32", target=None, lanes=2, split=True):
    """The kernel over (q, k_cache, v_cache, tables, query_start, context_lens, out), with `lanes` lanes and a
    scratch for every chunk of the batch's longest table (`split`), or for one (nothing can be split)."""
    kernel = get_kernel("paged_attention", {"num_q_heads": hq, "num_kv_heads": hkv, "head_dim": d, "block_size": bs,
                                            "kv_dtype": kv_dtype}, target)

    def call(q, k_cache, v_cache, tables, query_start, context_lens, out):
        chunk = max(1, CHUNK_TOKENS // bs) * bs
        chunks = -(-tables.shape[1] * bs // chunk) if split else 1
        partials = torch.full((tables.shape[0], hq, chunks, d + 2), float("nan"))
        kernel(q, k_cache, v_cache, tables, query_start, context_lens, out, partials, lanes)
    return call


def random_cache(num_blocks, bs, hkv, d, kv_dtype="fp32"):
    """K [NB, Hkv, D, bs] and V [NB, Hkv, bs, D] in the kernel's layout."""
    dtype = KV_DTYPES[kv_dtype]
    return torch.randn(num_blocks, hkv, d, bs).to(dtype), torch.randn(num_blocks, hkv, bs, d).to(dtype)


def reference_layout(k_cache, v_cache):
    """The operators/ reference's [NB, bs, Hkv, D] views, in fp32 (bf16 widens exactly)."""
    return k_cache.float().permute(0, 3, 1, 2), v_cache.float().permute(0, 2, 1, 3)


# bf16 caches keep the fp32 tolerance: kernel and reference read the same widened values and
# differ only in summation order.
@pytest.mark.parametrize("kv_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("hq,hkv,d,bs", ATTENTION_SHAPES)
def test_paged_decode_attention(hq, hkv, d, bs, kv_dtype, target=None):
    lens = [1, 5, bs, 3 * bs + 1, 40, 300]  # 300: three chunks of keys, merged
    max_blocks = max(-(-n // bs) for n in lens)
    k_cache, v_cache = random_cache(len(lens) * max_blocks + 3, bs, hkv, d, kv_dtype)
    tables = torch.randperm(k_cache.shape[0])[: len(lens) * max_blocks].view(len(lens), max_blocks).int().contiguous()
    q = torch.randn(len(lens), hq, d)
    context_lens = torch.tensor(lens, dtype=torch.int32)
    query_start = torch.arange(len(lens) + 1, dtype=torch.int32)
    out = poisoned(len(lens), hq, d)
    attention_kernel(hq, hkv, d, bs, kv_dtype, target)(q, k_cache, v_cache, tables, query_start, context_lens, out)
    k_ref, v_ref = reference_layout(k_cache, v_cache)
    assert_fp32_close(out, ref.paged_decode_attention(q, k_ref, v_ref, tables, context_lens))


@pytest.mark.parametrize("kv_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("hq,hkv,d,bs", ATTENTION_SHAPES)
def test_paged_prefill_attention_is_causal_over_cached_prefix(hq, hkv, d, bs, kv_dtype, target=None):
    # Sequence 0: a fresh prompt of 19 tokens; sequence 1: 6 new tokens after 11 cached ones; sequence 2: 12 new
    # tokens after 250 cached ones (rows whose keys span chunks).
    new, context = [19, 6, 12], [19, 17, 262]
    max_blocks = max(-(-n // bs) for n in context)
    k_cache, v_cache = random_cache(3 * max_blocks + 1, bs, hkv, d, kv_dtype)
    tables = torch.randperm(k_cache.shape[0])[: 3 * max_blocks].view(3, max_blocks).int().contiguous()
    query_start = torch.tensor([0, new[0], new[0] + new[1], sum(new)], dtype=torch.int32)
    q = torch.randn(sum(new), hq, d)
    out = poisoned(sum(new), hq, d)
    attention_kernel(hq, hkv, d, bs, kv_dtype, target)(q, k_cache, v_cache, tables, query_start,
                                               torch.tensor(context, dtype=torch.int32), out)
    k_ref, v_ref = reference_layout(k_cache, v_cache)
    for b in range(3):
        blocks = tables[b, : -(-context[b] // bs)].long()
        k = k_ref[blocks].reshape(-1, hkv, d)[: context[b]]
        v = v_ref[blocks].reshape(-1, hkv, d)[: context[b]]
        rows = slice(int(query_start[b]), int(query_start[b + 1]))
        assert_fp32_close(out[rows], ref.causal_attention(q[rows], k, v, q_start=context[b] - new[b]))


@pytest.mark.parametrize("lanes", [1, 2, 3, 16])
def test_paged_attention_result_does_not_depend_on_the_batch(lanes):
    # Alone, a decode row's key chunks are spread over tasks and merged after; in a batch of 64 it is one task
    # that merges them as it goes. The arithmetic is the same: so are the bits.
    hq, hkv, d, bs = 9, 3, 64, 16
    lens = torch.tensor([50, 7, 300, 129] * 16, dtype=torch.int32)
    k_cache, v_cache = random_cache(64 * 19, bs, hkv, d)
    tables = torch.randperm(64 * 19, dtype=torch.int32).view(64, 19).contiguous()
    q = torch.randn(64, hq, d)
    together = poisoned(64, hq, d)
    attention_kernel(hq, hkv, d, bs, lanes=lanes)(q, k_cache, v_cache, tables, torch.arange(65, dtype=torch.int32),
                                                  lens, together)
    for b in range(4):
        for split in (True, False):
            alone = poisoned(1, hq, d)
            attention_kernel(hq, hkv, d, bs, lanes=lanes, split=split)(
                q[b:b + 1].contiguous(), k_cache, v_cache, tables[b:b + 1].contiguous(),
                torch.arange(2, dtype=torch.int32), lens[b:b + 1].contiguous(), alone)
            assert torch.equal(alone[0], together[b]), (int(lens[b]), split)


def test_prefill_rows_split_over_tasks_or_not_give_the_same_bits():
    # Alone, a 100-row prefill chunk after 200 cached tokens is dealt out in groups of rows; behind 63 decode
    # rows it is one task.
    hq, hkv, d, bs = 9, 3, 64, 16
    k_cache, v_cache = random_cache(64 * 19, bs, hkv, d)
    tables = torch.randperm(64 * 19, dtype=torch.int32).view(64, 19).contiguous()
    lens = torch.tensor([300] + [40] * 63, dtype=torch.int32)
    query_start = torch.tensor([0] + list(range(100, 164)), dtype=torch.int32)
    q = torch.randn(163, hq, d)
    together = poisoned(163, hq, d)
    attention_kernel(hq, hkv, d, bs)(q, k_cache, v_cache, tables, query_start, lens, together)
    alone = poisoned(100, hq, d)
    attention_kernel(hq, hkv, d, bs)(q[:100].contiguous(), k_cache, v_cache, tables[:1].contiguous(),
                                     torch.tensor([0, 100], dtype=torch.int32), lens[:1].contiguous(), alone)
    assert torch.equal(alone, together[:100])
    k_ref, v_ref = reference_layout(k_cache, v_cache)
    k = k_ref[tables[0].long()].reshape(-1, hkv, d)[:300]
    v = v_ref[tables[0].long()].reshape(-1, hkv, d)[:300]
    assert_fp32_close(alone, ref.causal_attention(q[:100], k, v, q_start=200))


def test_rms_norm_op_accepts_unaligned_views():
    # A norm weight can be a view into a memory-mapped GGUF file at any 4-byte offset.
    from codegen import ops

    storage = torch.randn(64 + 4)
    weight = storage[4:]  # 16 bytes past a 64-byte boundary
    x = torch.randn(3, 64)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-5), ref.rms_norm(x, weight, 1e-5), rtol=1e-5, atol=1e-5)


# The bf16 matmul: a product of two bf16 is exact in fp32, so the kernel and fp32 arithmetic on the same bf16
# values differ only in summation order.


def bf16_matmul_run(weight, x, out_dtype="fp32", target=None):
    """x W^T through the kernel built for `target` (the host by default)."""
    n, k = weight.shape
    vectors, _ = bf16_matmul.tiles(target or host_target())
    out = poisoned(x.shape[0], n).to(DTYPES[out_dtype])
    get_kernel("bf16_matmul", {"n": n, "k": k, "out_dtype": out_dtype}, target)(
        x, bf16_matmul.pack(weight, vectors), out)
    return out


def bf16_randn(*shape):
    return torch.randn(*shape).to(torch.bfloat16)


# (N, K, T): a partial weight vector (37), a partial block (96 rows of 64), token tails, the thread pool (960 x 576)
@pytest.mark.parametrize("n,k,tokens", [(64, 96, 1), (37, 160, 3), (96, 576, 6), (960, 576, 9), (8, 2, 5)])
@pytest.mark.parametrize("out_dtype", ["fp32", "bf16"])
def test_bf16_matmul_matches_fp32_arithmetic(n, k, tokens, out_dtype, target=None):
    weight, x = bf16_randn(n, k), bf16_randn(tokens, k)
    out, expected = bf16_matmul_run(weight, x, out_dtype, target), x.float() @ weight.float().T
    if out_dtype == "fp32":
        assert_fp32_close(out, expected)
    else:  # one bf16 step (2^-8 to 2^-7 of the value) beyond fp32's summation-order tolerance
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(out.float(), expected, rtol=2 ** -7, atol=1e-5 * scale)


def test_bf16_matmul_token_does_not_depend_on_its_batch(target=None):
    weight, x = bf16_randn(200, 64), bf16_randn(11, 64)
    together = bf16_matmul_run(weight, x, target=target)
    for start, stop in [(0, 1), (5, 6), (10, 11), (3, 9), (1, 8)]:  # alone, in full tiles, in a tail
        assert torch.equal(bf16_matmul_run(weight, x[start:stop], target=target), together[start:stop])


@pytest.mark.skipif(not host_target().has("avx512_bf16"), reason="needs AVX512-BF16 for the instruction")
def test_bf16_matmul_fma_twin_gives_the_instructions_bits():
    weight, x = bf16_randn(96, 576), bf16_randn(7, 576)
    assert torch.equal(bf16_matmul_run(weight, x, target=level("avx512")), bf16_matmul_run(weight, x))


def test_bf16_pack_lays_pairs_of_16_rows_into_one_vector():
    weight = torch.arange(40 * 4, dtype=torch.float32).view(40, 4).to(torch.bfloat16)
    packed = bf16_matmul.pack(weight, vectors=2)  # 40 rows -> 2 blocks of 32, zero rows after 40
    assert packed.shape == (2, 2, 64) and packed.dtype == torch.uint16
    as_bf16 = packed.view(torch.bfloat16)
    assert as_bf16[0, 1, 2 * 17 + 1] == weight[17, 3]  # block 0, pair 1, row 17, second of the pair
    assert as_bf16[1, 0, 2 * 7] == weight[39, 0]
    assert torch.all(as_bf16[1, :, 2 * 8:] == 0)
    with pytest.raises(ValueError, match="even number of columns"):
        bf16_matmul.pack(torch.zeros(4, 3, dtype=torch.bfloat16), vectors=1)
