"""benchmarks/native_tools.py: the harness against each runtime's own benchmark.

Default suite (seconds): the ratio, spread, goal, table and exit status on known inputs; the decode rate read from
each form a runtime reports; engines without a native side listed as not available; bad arguments named; and the
native torch loop for real — the exact command the native container runs, on the tiny GPT-2 fixture on the host.
Heavy: one real end-to-end run of the torch engine through its image (harness trials and native runs alternated).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest

from benchmarks import native_tools as nt
from orchestrator import fixtures

TORCH = nt.TOOLS["torch"]


def _gpt2():
    return fixtures.build_tiny("gpt2", fixtures.default_root() / fixtures.fixture_name("gpt2"))


def test_ratio_spread_and_goal_on_known_inputs():
    at_par = nt.summarise(TORCH, [19.0, 24.0, 20.0], [20.0, 20.0, 20.0])
    assert at_par["harness"] == {"n": 3, "median": 20.0, "min": 19.0, "max": 24.0, "samples": [19.0, 24.0, 20.0]}
    assert at_par["ratio"]["ratio"] == pytest.approx(1.0)  # of medians: the one fast round does not lift it
    assert at_par["ratio"]["low"] <= 1.0 <= at_par["ratio"]["high"] and at_par["meets_goal"]
    slow = nt.summarise(TORCH, [18.0, 18.5, 18.9], [20.0, 20.5, 19.5])
    assert slow["ratio"]["ratio"] == pytest.approx(18.5 / 20.0) and not slow["meets_goal"]
    assert slow["ratio"]["high"] < 1.0  # every resample is slower: the interval stays below 1
    on_goal = nt.summarise(TORCH, [19.0, 19.0], [20.0, 20.0])
    assert on_goal["ratio"]["ratio"] == pytest.approx(0.95) and on_goal["meets_goal"]  # ≥ 0.95× meets it
    single = nt.summarise(TORCH, [19.0], [20.0])
    assert single["ratio"]["low"] is None and "no interval" in single["ratio"]["note"]


def test_table_and_exit_status():
    at_par = nt.summarise(TORCH, [18.0, 24.0, 20.0], [20.0, 20.0, 20.0])  # its interval reaches 0.9
    slow = nt.summarise(nt.TOOLS["llamacpp"], [18.0, 18.5, 18.9], [20.0, 20.5, 19.5])
    later = nt.not_measured(nt.TOOLS["onnx-genai"], "not available yet: runners.engines.onnx_genai has no "
                                                    "native_decode")
    text = nt.table([at_par, slow, later]).splitlines()
    assert "harness/native" in text[0] and len(text) == 4
    assert text[1].startswith("torch") and "20.0 [18.0–24.0]" in text[1]
    assert text[1].endswith(f"yes (≥ 0.95×), not certain: the interval reaches {at_par['ratio']['low']:.2f}")
    assert "0.925 [" in text[2] and text[2].endswith("NO (< 0.95×)")
    assert text[3].startswith("onnx-genai") and text[3].endswith("has no native_decode")
    sure = nt.summarise(TORCH, [20.0, 20.5, 21.0], [20.0, 20.0, 20.0])
    assert nt.table([sure]).splitlines()[1].endswith("yes (≥ 0.95×)")  # the whole interval meets the goal
    assert nt.exit_status([at_par, later], no_fail=False) == 0  # not available yet fails nothing
    assert nt.exit_status([at_par, slow], no_fail=False) == 1
    assert nt.exit_status([at_par, slow], no_fail=True) == 0
    broken = nt.not_measured(TORCH, "failed: RuntimeError: harness trial: …")
    assert nt.exit_status([at_par, broken], no_fail=True) == 2


def test_decode_rate_from_what_each_runtime_reports():
    assert nt.decode_rate({"tpot_s": 0.02}, 64) == pytest.approx(50.0)
    assert nt.decode_rate({"tpot_ms": [25.0, 3.0], "seconds": 2.0}, 64) == pytest.approx(40.0)  # OpenVINO GenAI
    assert nt.decode_rate({"decode_tokens_per_s": 41.0, "seconds": 9.0}, 64) == 41.0
    assert nt.decode_rate({"per_token_s": [0.01, 0.03]}, 3) == pytest.approx(50.0)
    assert nt.decode_rate({"seconds": 2.5, "first_token_s": 0.5, "tokens": 41}, 41) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="tpot_s"):
        nt.decode_rate({"seconds": 2.5, "tokens": 41}, 41)  # end to end only: not a decode rate


def test_engines_without_a_native_side_are_not_available():
    assert nt.unavailable(TORCH) is None and nt.unavailable(nt.TOOLS["llamacpp"]) is None
    assert "has no native_decode" in nt.unavailable(nt.Tool("openvino", "openvino", "native_decode"))
    assert "no engine 'nosuch'" in nt.unavailable(nt.Tool("nosuch", "torch-cpu", "native_decode"))


def test_a_native_decode_without_precision_measures_fp32_only():
    def fp32_only(artifact_dir, prompt_ids, new_tokens, threads):
        """A native_decode's signature without precision."""

    def any_precision(artifact_dir, prompt_ids, new_tokens, threads, precision="fp32"):
        """One with it."""

    assert nt.precision_argument(fp32_only, "fp32") == {}
    assert nt.precision_argument(any_precision, "int8") == {"precision": "int8"}
    with pytest.raises(ValueError, match="fp32 only"):  # never int8 asked and fp32 measured
        nt.precision_argument(fp32_only, "int8")


@pytest.mark.parametrize("argv, flag", [(["--new-tokens", "1"], "--new-tokens"), (["--reps", "0"], "--reps"),
                                        (["--engines", "tensorrt"], "--engines")])
def test_bad_arguments_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit):
        nt._args(argv)
    assert flag in capsys.readouterr().err


def test_native_torch_loop_as_its_container_runs_it():
    """The command the native container gets, on the host's torch: plain generate on the tiny GPT-2, each token
    timed. A call's N − 1 decode steps take most of it (prefill is one step of an 8-token prompt) and never more."""
    new_tokens, prompts = 16, [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20]]
    spec = {"engine": "torch", "model": str(_gpt2()), "prompts": prompts, "new_tokens": new_tokens, "threads": 1}
    out = subprocess.run([sys.executable, nt.__file__, "--inside", json.dumps(spec)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["decode_tok_s"] == statistics.median(result["rates"]) and len(result["rates"]) == len(prompts)
    for rate, seconds in zip(result["rates"], result["call_s"]):
        assert math.isfinite(rate) and 0.4 * seconds < (new_tokens - 1) / rate < seconds, result


@pytest.mark.heavy
def test_torch_end_to_end_through_its_image(docker_client, tmp_path, capsys):
    """Harness trials and native runs alternated through the torch-cpu image: both sides measured each round, the
    table printed and written. On a loaded machine the ratio only has to be of the right order (a decode rate
    taken from latency instead of TPOT is ~N× off)."""
    out = tmp_path / "native.json"
    code = nt.main(["--engines", "torch", "--model", str(_gpt2()), "--prompt-tokens", "8", "--new-tokens", "16",
                    "--reps", "2", "--prompts", "2", "--threads", "2", "--no-fail", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    row = json.loads(out.read_text())["rows"][0]
    assert row["status"] == "measured", row
    assert row["harness"]["n"] == row["native"]["n"] == 2
    assert 0.2 < row["ratio"]["ratio"] < 5, row
    assert "torch round 2" in printed and printed.splitlines()[-1].startswith("torch")
