"""bench.peers' round-by-round line: each alternating round's engines are compared with each other, not across
rounds."""
from bench.peers import round_ratios


def engine(times, tokens=4096, w4=None, interleaved=True):
    result = {"batches": {"64": {"times": times, "tokens": tokens}}, "w1_interleaved": interleaved}
    if w4 is not None:
        result.update(w4_seconds_per_token=w4, w4_interleaved=interleaved)
    return result


def test_each_round_divides_its_own_engines_times():
    ok = {"sqlm default plan": engine([2.0, 4.0], w4=[0.005, 0.006]),
          "sqlm bf16 weights": engine([1.0, 1.0], tokens=2048),
          "HF transformers fp32": engine([6.0, 8.0]),
          "llama.cpp Q4_1 (native build)": {"w4_seconds_per_token": [0.010, 0.009], "w4_interleaved": True}}
    assert round_ratios(ok, "64") == [
        "- Round by round: W1 sqlm default plan 3.00x 2.00x HF; W1 sqlm bf16 weights 3.00x 4.00x HF; "
        "W4 sqlm default plan 2.00x 1.50x llama.cpp."]


def test_no_line_where_the_rounds_did_not_run():
    ok = {"sqlm default plan": engine([2.0], interleaved=False), "HF transformers fp32": engine([6.0])}
    assert round_ratios(ok, "64") == []
