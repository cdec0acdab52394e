"""Turns a scheduled batch into tensors, runs one forward pass over the ragged batch, returns logits.

The KV cache is one preallocated pair of tensors per layer stack; block ids from
runtime.kv_blocks index it. Two attention backends read it for a ragged batch (rows
never see each other's tokens; each attends to its cached prefix plus itself, causally):

- `KernelPagedAttention` (attention_kernel='tvm'): the kernel set's paged-attention kernel
  (codegen.kernel_set.AttentionKernels, handed in) reads the blocks in place, one call per
  layer for the whole batch, decodes and prefill alike.
- `GatherPagedAttention` (attention_kernel='torch', no kernels handed in): the reference; gathers each group's
  blocks into a padded tensor and runs torch SDPA (one group for the decodes, prefill
  chunks grouped so padding stays bounded).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codegen.kernel_set import AttentionKernels
from operators import host_memory, tensor_ops
from operators.llama import LlamaModel
from runtime.batch import ScheduledBatch

KV_CACHE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
INT8_MAX = 127.0


class PagedKVCache:
    """K and V blocks of every layer, in codegen.kernels.paged_attention's layout:
    k [L, NB, Hkv, D, bs] (each block's keys transposed) and v [L, NB, Hkv, bs, D], so one
    block of one head is one contiguous run for the kernel.

    int8 (vLLM's and LMDeploy's per-token quantization): each token's K and V of each head are stored as int8
    with one fp32 scale (max |x| / 127), k_scale / v_scale [L, NB, Hkv, bs]: 2D + 8 bytes a token and head
    against fp32's 8D (0.27x at D = 64). Both backends read it: torch's gather widens a block back to fp32,
    TVM's paged kernel (kv_dtype 'int8') folds the scales into its scores and value weights; the write
    (quantize) is torch's.
    Keys have a few large channels (the same ones in every token), which would leave the others a few bits of
    a per-token scale: each key channel is first divided by its typical magnitude (k_channel [L, Hkv, D],
    calibrated once on a fixed text: calibrate_keys), and multiplied back when read. q.k is unchanged by it up
    to rounding (KIVI's and SmoothQuant's per-channel observation, folded into the per-token format)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32):
        # Zeroed, not empty: masked slots of a gathered block must not hold NaNs (0 * NaN = NaN).
        self.k = host_memory.lazy_zeros((num_layers, num_blocks, num_kv_heads, head_dim, block_size), dtype)
        self.v = host_memory.lazy_zeros((num_layers, num_blocks, num_kv_heads, block_size, head_dim), dtype)
        # per-layer views made once: indexing self.k[layer] costs ~1 us per call, twice per layer and step
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0)))
        self._kernel_layers: list | None = None  # the layers as kernel-side views, made by their first use
        self.k_scale = self.v_scale = None
        if dtype == torch.int8:
            self.k_scale = torch.zeros(num_layers, num_blocks, num_kv_heads, block_size)
            self.v_scale = torch.zeros(num_layers, num_blocks, num_kv_heads, block_size)
            self.scales = list(zip(self.k_scale.unbind(0), self.v_scale.unbind(0)))
            self.k_channel = torch.ones(num_layers, num_kv_heads, head_dim)
            self.v_channel = torch.ones(num_layers, num_kv_heads, head_dim)
        self.block_size = block_size

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    def kernel_layers(self, view) -> list:
        """Each layer's (K, V) as kernel-side views (`view`: AttentionKernels.view), made on first use."""
        if self._kernel_layers is None:
            self._kernel_layers = [(view(k), view(v)) for k, v in self.layers]
        return self._kernel_layers

    def block_view(self, layer: int, which: str = "k") -> torch.Tensor:
        """[NB, bs, Hkv, D] view of one layer, the layout of operators.tensor_ops.paged_decode_attention."""
        return self.k[layer].permute(0, 3, 1, 2) if which == "k" else self.v[layer].permute(0, 2, 1, 3)

    def write(self, layer: int, blocks: torch.Tensor, offsets: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the K/V [T, Hkv, D] of tokens at (block, offset) slots, blocks/offsets [T] int32."""
        if self.k_scale is not None:
            k, k_scale = _quantize_int8(k.float() / self.k_channel[layer])
            v, v_scale = _quantize_int8(v.float() / self.v_channel[layer])
            self.k_scale[layer][blocks, :, offsets] = k_scale
            self.v_scale[layer][blocks, :, offsets] = v_scale
        self.k[layer][blocks, :, :, offsets] = k.to(self.dtype)
        self.v[layer][blocks, :, offsets, :] = v.to(self.dtype)

    @staticmethod
    def bytes_per_block(config, block_size: int, dtype: torch.dtype = torch.float32) -> int:
        scales = 2 * config.num_layers * block_size * config.num_kv_heads * 4 if dtype == torch.int8 else 0
        return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * dtype.itemsize + scales

    @property
    def nbytes(self) -> int:
        scales = self.k_scale.nbytes + self.v_scale.nbytes if self.k_scale is not None else 0
        return self.k.nbytes + self.v.nbytes + scales

    @torch.inference_mode()
    def calibrate_keys(self, model, token_ids: list[int]) -> None:
        """k_channel from the keys the model computes for token_ids: each channel's largest |k|, relative to its
        head's largest (deterministic for a model, so blocks kept on disk stay valid)."""
        from operators.llama import ContiguousKVCache

        reference = ContiguousKVCache(model.config, len(token_ids))
        model.forward(torch.tensor(token_ids), torch.arange(len(token_ids)), reference)
        for name, kv in (("k_channel", reference.k), ("v_channel", reference.v)):
            amax = kv.abs().amax(dim=1)  # [L, Hkv, D]
            setattr(self, name, (amax / amax.amax(dim=-1, keepdim=True)).clamp_min(1e-3))

    def block_tensors(self) -> list[torch.Tensor]:
        """Every tensor that holds part of a block (block index on dim 1): K, V and, for int8, their scales."""
        return [self.k, self.v] + ([self.k_scale, self.v_scale] if self.k_scale is not None else [])

    @property
    def block_bytes(self) -> int:
        """Bytes of one block's K, V (and scales): what read_block returns."""
        return sum(t[:, 0].numel() * t.dtype.itemsize for t in self.block_tensors())

    def read_block(self, block: int) -> bytes:
        """One block's K, V (and scales) of every layer, as bytes: a KV tier keeps them, a decode replica adopts them."""
        return b"".join(t[:, block].contiguous().view(torch.uint8).numpy().tobytes() for t in self.block_tensors())

    def write_block(self, block: int, raw: bytes) -> None:
        """The inverse of read_block."""
        at = 0
        for t in self.block_tensors():
            n = t[:, 0].numel() * t.dtype.itemsize
            t[:, block] = torch.frombuffer(bytearray(raw[at:at + n]), dtype=torch.uint8).view(t.dtype).view(t[:, block].shape)
            at += n

    def copy_blocks(self, copies) -> None:
        for src, dst in copies:
            for t in self.block_tensors():
                t[:, dst] = t[:, src]


def _quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, H, D] -> (int8 [T, H, D], scale [T, H]): per token and head, symmetric, round to nearest."""
    scale = x.abs().amax(dim=-1).float() / INT8_MAX  # [T, H]
    q = torch.round(x.float() / scale.clamp_min(1e-30)[..., None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


class StepLogits:
    """A step's logit rows, in batch order, from their final hidden states [N, H]: `all()` computes every logit
    (once); `greedy(rows, excluded)` only those rows' argmax, which the model's lm_head may find without every
    logit (LlamaModel.greedy_tokens)."""

    def __init__(self, model: LlamaModel, hidden: torch.Tensor):
        self._model, self._hidden = model, hidden
        self._all: torch.Tensor | None = None

    def all(self) -> torch.Tensor:
        """[N, V] fp32."""
        if self._all is None:
            with torch.inference_mode():
                self._all = self._model.compute_logits(self._hidden)
        return self._all

    def greedy(self, rows: list[int], excluded) -> list[int]:
        """The argmax of each of `rows`, leaving out that row's `excluded` token ids (from all() once computed)."""
        if self._all is not None:
            return tensor_ops.argmax_rows(self._all[rows], excluded)
        with torch.inference_mode():
            return self._model.greedy_tokens(self._hidden[rows], excluded)


@dataclass
class AttentionGroup:
    """Rows attended together in one padded SDPA call: P rows of up to Tq query tokens each."""

    query_index: torch.Tensor  # [P, Tq] int64 flat batch rows of each row's queries (padding repeats the last one)
    block_tables: torch.Tensor  # [P, MB] int64 (padded with block 0, masked out)
    mask: torch.Tensor  # [P, 1, Tq, MB * block_size] bool, True where a query may attend
    output_index: torch.Tensor | None  # [n] rows of the [P * Tq] output that are real tokens (None: all are)


@dataclass
class RaggedBatch:
    """The whole batch as the paged-attention kernel takes it: rows in flat token order."""

    block_tables: torch.Tensor  # [B, MB] int32 (padded with block 0, never read)
    query_start: torch.Tensor  # [B + 1] int32, row b owns flat tokens query_start[b] .. query_start[b+1]-1
    context_lens: torch.Tensor  # [B] int32, cached tokens of row b, its new ones included


@dataclass
class ForwardInputs:
    token_ids: torch.Tensor  # [T] int64, decode rows first, then prefill chunks
    positions: torch.Tensor  # [T] int64
    slot_blocks: torch.Tensor  # [T] int32, the KV block of each token
    slot_offsets: torch.Tensor  # [T] int32, its offset in the block
    ragged: RaggedBatch
    groups: list[AttentionGroup]  # for the gather backend: decodes, then prefill chunks, in token order
    logits_indices: torch.Tensor  # [N] int64, flat rows whose logits the batch asked for, in batch order


class KernelPagedAttention:
    """AttentionBackend on codegen's TVM paged-attention kernel: no gather, one call per layer."""

    def __init__(self, cache: PagedKVCache, inputs: ForwardInputs, num_q_heads: int, kernels: AttentionKernels):
        self._rope_qkv, self._attention, self._view = kernels.rope_qkv, kernels.paged_attention, kernels.view
        self.cache = cache
        self.inputs = inputs
        self.num_q_heads = num_q_heads
        if cache.k_scale is None:
            # what every layer's two calls pass, as kernel-side views made once (a torch tensor is converted on
            # each call: ~1 us an argument, 9 arguments, 30 layers): the pool's layers once per pool, the step's
            # slots and tables once per step
            self._layers = cache.kernel_layers(self._view)
            r = inputs.ragged
            self._slots = tuple(self._view(t.contiguous()) for t in (inputs.slot_blocks, inputs.slot_offsets))
            self._tables = tuple(self._view(t.contiguous()) for t in (r.block_tables, r.query_start, r.context_lens))
            self._partials = self._view(kernels.partials(r.block_tables.shape[0], num_q_heads, cache.k.shape[2],
                                                         cache.k.shape[3], r.block_tables.shape[1], cache.k.shape[4]))
            self._trig_of, self._trig = None, ()  # the step's RoPE cos/sin (the same tensors in every layer)

    def attend(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        inp, r, cache = self.inputs, self.inputs.ragged, self.cache
        if cache.k_scale is None:
            if cos is not self._trig_of:
                self._trig_of, self._trig = cos, (self._view(cos.contiguous()), self._view(sin.contiguous()))
            k_cache, v_cache = self._layers[layer]
            q = self._rope_qkv(qkv, *self._trig, k_cache, v_cache, *self._slots, self.num_q_heads)
            return self._attention(q, k_cache, v_cache, *self._tables, partials=self._partials)  # [T, Hq, D]
        k_cache, v_cache = cache.layers[layer]
        # int8: RoPE and the quantizing write in torch, the attention over the int8 blocks in the kernel
        q, k, v = tensor_ops.rope_qkv(qkv, cos, sin, self.num_q_heads, k_cache.shape[1])
        cache.write(layer, inp.slot_blocks, inp.slot_offsets, k, v)
        scales = (*cache.scales[layer], cache.k_channel[layer], cache.v_channel[layer])
        return self._attention(q.float(), k_cache, v_cache, r.block_tables, r.query_start, r.context_lens,
                               int8_scales=scales)


class GatherPagedAttention:
    """AttentionBackend in torch: each group gathers its rows' blocks once per layer and runs
    one SDPA over the padded rows, so the Python cost per layer does not grow with the batch."""

    def __init__(self, cache: PagedKVCache, inputs: ForwardInputs, num_q_heads: int):
        self.cache = cache
        self.inputs = inputs
        self.num_q_heads = num_q_heads

    def attend(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        inp = self.inputs
        q, k, v = tensor_ops.rope_qkv(qkv, cos, sin, self.num_q_heads, self.cache.k.shape[2])
        self.cache.write(layer, inp.slot_blocks, inp.slot_offsets, k, v)
        k_cache, v_cache = self.cache.layers[layer]  # [NB, Hkv, D, bs], [NB, Hkv, bs, D]
        _, num_kv_heads, head_dim, bs = k_cache.shape
        outputs = []
        for g in inp.groups:
            rows, width = g.query_index.shape
            tables = g.block_tables.view(-1)  # [P * MB]
            keys = k_cache.index_select(0, tables).view(rows, -1, num_kv_heads, head_dim, bs)  # [P, MB, Hkv, D, bs]
            values = v_cache.index_select(0, tables).view(rows, -1, num_kv_heads, bs, head_dim)  # [P, MB, Hkv, bs, D]
            if self.cache.k_scale is not None:  # int8: widen with each token's scale
                k_scale, v_scale = self.cache.scales[layer]  # [NB, Hkv, bs] each
                keys = keys.float() * k_scale.index_select(0, tables).view(rows, -1, num_kv_heads, 1, bs) \
                    * self.cache.k_channel[layer].view(1, 1, num_kv_heads, head_dim, 1)
                values = values.float() * v_scale.index_select(0, tables).view(rows, -1, num_kv_heads, bs, 1) \
                    * self.cache.v_channel[layer].view(1, 1, num_kv_heads, 1, head_dim)
            keys = keys.permute(0, 2, 1, 4, 3).reshape(rows, num_kv_heads, -1, head_dim).to(q.dtype)  # [P, Hkv, S, D]
            values = values.permute(0, 2, 1, 3, 4).reshape(rows, num_kv_heads, -1, head_dim).to(q.dtype)
            queries = q[g.query_index.view(-1)].view(rows, width, self.num_q_heads, head_dim).transpose(1, 2)  # [P, Hq, Tq, D]
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=g.mask, enable_gqa=True)  # [P, Hq, Tq, D]
            out = out.transpose(1, 2).reshape(rows * width, self.num_q_heads, head_dim)  # [P * Tq, Hq, D]
            outputs.append(out if g.output_index is None else out[g.output_index])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # [T, Hq, D]


def _pad_limited_groups(rows: list[int], lengths: list[int], max_padding: float = 2.0) -> list[list[int]]:
    """Split rows (longest first) into consecutive groups whose padded size is at most max_padding x real."""
    groups: list[list[int]] = []
    for i in rows:
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= max_padding * (
                sum(lengths[j] for j in groups[-1]) + lengths[i]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, kv_cache_dtype: str = "fp32",
                 attention: AttentionKernels | None = None):
        """attention: the kernel set's paged-attention kernels; None runs the torch reference backend."""
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {sorted(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        c = model.config
        self.model = model
        self.block_size = block_size
        self.kernels = attention
        self.cache = PagedKVCache(c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim,
                                  KV_CACHE_DTYPES[kv_cache_dtype])
        if attention is not None:  # compiled now, for this cache, rather than in the first request
            activations = "bf16" if getattr(model, "activation_dtype", torch.float32) == torch.bfloat16 else "fp32"
            attention.warm_up(c, block_size, activations, kv_cache_dtype)
        # steps of a few rows run as pre-bound kernel calls (AttentionKernels.capture), one capture per
        # (rows, sequences) shape; None marks a shape the kernel set declined. False turns it off (profiling).
        self.capture_steps = attention is not None and attention.capture is not None
        self._captures: dict[tuple[int, int], object] = {}

    def prepare_batch(self, batch: ScheduledBatch) -> ForwardInputs:
        bs = self.block_size
        # Decodes first, then prefill chunks longest first (so padding within a group stays small).
        order = sorted(range(len(batch.rows)), key=lambda i: (batch.rows[i].num_tokens > 1, -batch.rows[i].num_tokens))
        token_ids, positions, blocks, first_token = [], [], [], {}
        for i in order:
            row = batch.rows[i]
            first_token[i] = len(token_ids)
            table = row.block_table
            pos = range(row.start, row.context_len)
            token_ids += row.token_ids
            positions += pos
            blocks += [table[p // bs] for p in pos]
        decode = [i for i in order if batch.rows[i].num_tokens == 1]
        groups = []
        if self.kernels is None:
            parts = ([decode] if decode else []) + _pad_limited_groups(
                [i for i in order if batch.rows[i].num_tokens > 1], [r.num_tokens for r in batch.rows])
            groups = [self._group([batch.rows[i] for i in part], [first_token[i] for i in part]) for part in parts]
        logits_indices = [first_token[i] + off for i, row in enumerate(batch.rows) for off in row.logit_offsets]
        return ForwardInputs(
            token_ids=torch.tensor(token_ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            slot_blocks=torch.tensor(blocks, dtype=torch.int32),
            slot_offsets=torch.tensor([p % bs for p in positions], dtype=torch.int32),
            ragged=self._ragged([batch.rows[i] for i in order]),
            groups=groups,
            logits_indices=torch.tensor(logits_indices, dtype=torch.long),
        )

    def _ragged(self, rows) -> RaggedBatch:
        bs = self.block_size
        max_blocks = max(-(-r.context_len // bs) for r in rows)
        tables = [list(r.block_table[:max_blocks]) + [0] * (max_blocks - len(r.block_table[:max_blocks])) for r in rows]
        starts = [0]
        for r in rows:
            starts.append(starts[-1] + r.num_tokens)
        return RaggedBatch(block_tables=torch.tensor(tables, dtype=torch.int32),
                           query_start=torch.tensor(starts, dtype=torch.int32),
                           context_lens=torch.tensor([r.context_len for r in rows], dtype=torch.int32))

    def _group(self, rows, first_tokens: list[int]) -> AttentionGroup:
        bs = self.block_size
        width = max(r.num_tokens for r in rows)
        max_blocks = max(-(-r.context_len // bs) for r in rows)
        query_index, tables, query_pos, output_index = [], [], [], []
        for p, (row, first) in enumerate(zip(rows, first_tokens)):
            t = row.num_tokens
            query_index.append([first + min(j, t - 1) for j in range(width)])
            query_pos.append([row.start + min(j, t - 1) for j in range(width)])
            table = list(row.block_table[:max_blocks])
            tables.append(table + [0] * (max_blocks - len(table)))
            output_index += range(p * width, p * width + t)
        query_pos = torch.tensor(query_pos, dtype=torch.long)  # [P, Tq]
        mask = torch.arange(max_blocks * bs)[None, None, :] <= query_pos[:, :, None]  # [P, Tq, S] causal, own row only
        return AttentionGroup(
            query_index=torch.tensor(query_index, dtype=torch.long),
            block_tables=torch.tensor(tables, dtype=torch.long),
            mask=mask[:, None],  # [P, 1, Tq, S]
            output_index=None if width == 1 else torch.tensor(output_index, dtype=torch.long),
        )

    def attention(self, inputs: ForwardInputs):
        if self.kernels is not None:
            return KernelPagedAttention(self.cache, inputs, self.model.config.num_heads, self.kernels)
        return GatherPagedAttention(self.cache, inputs, self.model.config.num_heads)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepLogits:
        """The logits of the rows' logit_offsets ([batch.num_logits, V], batch order), computed on demand."""
        inputs = self.prepare_batch(batch)
        self.cache.copy_blocks(batch.block_copies)
        captured = self._captured(inputs)
        if captured is not None:
            r = inputs.ragged
            hidden = captured.run(inputs.token_ids, inputs.positions, inputs.slot_blocks, inputs.slot_offsets,
                                  r.block_tables, r.query_start, r.context_lens)
        else:
            hidden = self.model.forward(inputs.token_ids, inputs.positions, self.attention(inputs))  # [T, H]
        return StepLogits(self.model, hidden[inputs.logits_indices])

    def _captured(self, inputs: ForwardInputs):
        """The capture for this step's shape (made on first use), or None: the model's own forward runs."""
        shape = (inputs.token_ids.shape[0], inputs.ragged.context_lens.shape[0])
        if not self.capture_steps or shape[0] > self.kernels.capture_max_tokens:
            return None  # larger steps are never captured: no entry for each prefill chunk's shape
        if shape not in self._captures:
            self._captures[shape] = self.kernels.capture(
                self.model, self.cache.kernel_layers(self.kernels.view), self.block_size, *shape,
                max_blocks=self.cache.k.shape[1])
        return self._captures[shape]
