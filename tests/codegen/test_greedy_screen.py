"""The greedy screen finds the argmax of the exact logits (codegen/greedy_screen.py): its kernel's bounds hold for
every row, and the selection is the exact argmax whatever the ties, exclusions and degenerate rows."""
import pytest
import torch

from catalog.quant import quantize
from codegen.build import get_kernel
from codegen.greedy_screen import MAX_CANDIDATES, GreedyScreen, row_norms
from codegen.linear import TvmBf16Linear, TvmQuantizedLinear
from codegen.packed import TILE_ROWS, pack

QTYPES = ["Q4_1", "Q4_0", "Q8_0"]


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def screen_of(weight) -> tuple[GreedyScreen, TvmQuantizedLinear]:
    linear = TvmQuantizedLinear(weight)
    return GreedyScreen(weight, linear._weights, linear), linear


def exact_argmax(x, weight, excluded=None):
    """The reference: fp64 logits over the dequantized rows (the lowest id on exact ties)."""
    logits = x.double() @ weight.dequantize().double().T
    for row, ids in enumerate(excluded or []):
        logits[row, sorted(ids)] = float("-inf")
    return logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("rows,cols", [(1000, 128), (37, 64), (4096, 576)])  # partial last tile; one per thread
def test_bounds_hold_for_every_row_and_tile(qtype, rows, cols, target=None):
    """The screen's kernel: upper >= the exact product for every row, and each tile's largest upper."""
    weight = quantize(qtype, torch.randn(rows, cols))
    tiles = -(-rows // TILE_ROWS)
    norms = torch.zeros(tiles * TILE_ROWS)
    norms[:rows] = row_norms(weight)
    x = torch.randn(9, cols) * torch.logspace(-3, 2, 9)[:, None]  # scales from tiny to large
    x[0, :32] = 0  # an all-zero block
    upper, tile_max = torch.full((9, rows), float("nan")), torch.full((9, tiles), float("nan"))
    get_kernel("quant_gemv", {"qtype": qtype, "n": rows, "k": cols, "screen": True}, target)(
        x, *pack(weight).tensors, norms.view(tiles, TILE_ROWS), upper, tile_max)
    w = weight.dequantize().double()
    exact = x.double() @ w.T
    assert (upper.double() >= exact).all()
    # and no looser than its Cauchy-Schwarz bound, e = ||x - x_int8|| ||w'|| (x_int8: one int8 piece per 32-block; w'
    # the row row_norms measures): upper = approx + ~e and |approx - exact| <= e
    blocks = x.double().view(9, -1, 32)
    step = blocks.abs().amax(-1, keepdim=True) / 127
    residual = (blocks - torch.round(blocks / step.clamp(min=1e-300)) * step).view(9, -1)
    cauchy_schwarz = residual.norm(dim=1)[:, None] * norms[:rows].double()[None]
    assert (upper.double() - exact <= 2.1 * cauchy_schwarz + 1e-3 * x.double().norm(dim=1)[:, None] * w.norm(dim=1)).all()
    padded = torch.full((9, tiles * TILE_ROWS), float("-inf"))
    padded[:, :rows] = upper
    assert torch.equal(tile_max, padded.view(9, -1, TILE_ROWS).amax(-1))


@pytest.mark.parametrize("qtype", QTYPES)
def test_bounds_hold_where_every_rounding_error_points_the_same_way(qtype, target=None):
    """The worst case for the bound: each activation sits 0.49 of an int8 step above its rounded value, so the
    rounding errors add up along the weights. Q4_1's kernel multiplies the rounded activations by d * q alone (its
    min meets the exact sum of x), whose rows are all-positive and longer than the weight rows themselves."""
    rows, cols = 64, 128
    weight = quantize(qtype, torch.randn(rows, cols))
    steps = torch.randint(-120, 120, (1, cols)).float() + 0.49
    steps[0, ::32] = 127  # each block's largest |x|: its step is exactly 1
    tiles = -(-rows // TILE_ROWS)
    norms = torch.zeros(tiles * TILE_ROWS)
    norms[:rows] = row_norms(weight)
    upper, tile_max = torch.empty(1, rows), torch.empty(1, tiles)
    get_kernel("quant_gemv", {"qtype": qtype, "n": rows, "k": cols, "screen": True}, target)(
        steps, *pack(weight).tensors, norms.view(tiles, TILE_ROWS), upper, tile_max)
    assert (upper.double() >= steps.double() @ weight.dequantize().double().T).all()


@pytest.mark.parametrize("qtype", QTYPES)
def test_argmax_is_the_exact_logits_argmax(qtype):
    weight = quantize(qtype, torch.randn(1000, 128) * 0.1)
    screen, _ = screen_of(weight)
    x = torch.randn(64, 128)
    assert screen.argmax(x, [()] * 64) == exact_argmax(x, weight)


def test_near_ties_go_to_the_larger_logit_and_exact_ties_to_the_lowest_id():
    base = torch.randn(200, 64) * 0.1
    base[150] = base[40]  # an exact duplicate of row 40: a tie at any x
    base[41] = base[40] * (1 + 1e-3)  # a near-copy, 0.1% larger: screened together, decided by the exact logits
    weight = quantize("Q8_0", base)
    screen, _ = screen_of(weight)
    w40 = weight.dequantize()[40]
    x = torch.stack([w40, -w40, torch.randn(64)])  # rows 40/41/150 on top for the first, bottom for the second
    assert screen.argmax(x, [()] * 3) == exact_argmax(x, weight)


def test_excluded_ids_are_left_out():
    weight = quantize("Q4_1", torch.randn(300, 64))
    screen, _ = screen_of(weight)
    x = torch.randn(4, 64)
    best = exact_argmax(x, weight)
    excluded = [{best[0]}, (), {best[2], 0, 299}, set(range(0, 300, 2))]
    assert screen.argmax(x, excluded) == exact_argmax(x, weight, excluded)


def test_a_row_with_too_many_candidates_falls_back_to_its_full_logits():
    weight = quantize("Q8_0", torch.randn(MAX_CANDIDATES + 500, 64))
    screen, _ = screen_of(weight)
    x = torch.randn(3, 64)
    x[1] = 0  # every logit 0: every row a candidate
    tokens = screen.argmax(x, [(), (), ()])
    assert tokens == exact_argmax(x, weight) and tokens[1] == 0


def test_the_linear_screens_from_two_rows_and_matches_its_full_product():
    weight = quantize("Q4_1", torch.randn(500, 64))
    linear = TvmQuantizedLinear(weight)
    x = torch.randn(5, 64)
    one = linear.argmax(x[:1], [()])
    assert linear._screen is None  # one row: the GEMV and an argmax
    assert linear.argmax(x, [()] * 5) == torch.argmax(linear(x), dim=-1).tolist()
    assert linear._screen is not None and one == [linear.argmax(x, [()] * 5)[0]]


@pytest.mark.parametrize("qtype", QTYPES)
def test_a_bf16_lm_head_screens_over_its_blocks_to_the_argmax_of_its_own_logits(qtype):
    """Rows a quant step or so apart, whose order bf16 rounding changes for some x; activations whole int8 values,
    so the screen's own bound is only fp32 rounding and the floor's margin for the bf16 rows decides."""
    base = torch.randn(1, 64) * 0.1
    step = base.abs().max() / (127 if qtype == "Q8_0" else 7)
    weight = quantize(qtype, base + step * torch.rand(400, 64))
    rounded = weight.dequantize().to(torch.bfloat16)
    x = torch.randint(-127, 128, (200, 64)).float()
    x[:, ::32] = 127  # each block's step exactly 1
    logits = x.double() @ rounded.double().T
    assert (logits.argmax(-1) != (x.double() @ weight.dequantize().double().T).argmax(-1)).any()  # the case arises
    linear = TvmBf16Linear(rounded, source=weight)
    assert linear.argmax(x, [()] * 200) == logits.argmax(-1).tolist()
    assert linear.argmax(x[:1], [{0}]) == [logits[0, 1:].argmax().item() + 1]  # one row, excluded ids


def test_a_bf16_linear_without_blocks_takes_its_argmax_from_the_full_product():
    linear = TvmBf16Linear(torch.randn(300, 64).to(torch.bfloat16))
    x = torch.randn(3, 64)
    assert linear.argmax(x, [()] * 3) == torch.argmax(linear(x).float(), dim=-1).tolist() and linear._screen is None
