"""The torch engine through the whole runner: seven architectures, exact token counts, schema-valid records."""

from __future__ import annotations

import json
import shutil

from _models import smollm2_dir, tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
import pytest

from orchestrator import fixtures
from runners.engines.hf_generate import generate_ids
from runners.environment import cuda_problem
from runners.job import parse_job
from runners.record import validate_record
from runners.runner import TrialRun, load_tokenizer
from runners.stopping import eos_ids


def run(model_dir, **over):
    data = {"engine": "torch", "device": "cpu", "model": {"path": str(model_dir)},
            "workload": {"count": 4, "seed": 2412}, "generation": {"batch_size": 1, "new_tokens": 12},
            "warmup": {"batches": 1}, "meters": {"codecarbon": False, "sample_interval_s": 0.05}}
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    record = TrialRun(parse_job(data), data).run()
    validate_record(record)
    return record


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("arch", fixtures.ARCHITECTURES)
def test_each_architecture_generates_exactly_n_new_tokens(tiny_models, arch, batch):
    record = run(tiny_models[arch], generation={"batch_size": batch, "new_tokens": 12},
                 workload={"count": 5})
    assert record["status"] == "ok", record["error"]
    assert record["model"]["model_type"] == arch
    assert [p["generated_tokens"] for p in record["per_prompt"]] == [12] * 5
    assert all(len(p["output_ids"]) == 12 for p in record["per_prompt"])
    assert record["tokens"] == {"prompts": 5, "batches": -(-5 // batch), "input": record["tokens"]["input"],
                                "output": 60}
    assert record["engine"]["details"]["kv_cache"] is True
    gen = record["phases"]["generate"]
    assert gen["duration_s"] > 0 and record["metrics"]["tokens_per_s"] > 0
    first = record["per_prompt"][0]
    assert 0 < first["ttft_s"] < first["latency_s"] and first["tpot_s"] > 0


def test_each_phase_runs_inside_its_own_window(tiny_model_dir, monkeypatch):
    """Loading happens in the load window and nowhere else; generation only in the generate window. Checked by the
    instants the engine's own methods were called, against the windows' boundaries on the same clock."""
    import time

    from runners.engines.torch_engine import TorchEngine

    calls: dict[str, list[float]] = {"load": [], "generate": []}
    for name in calls:
        original = getattr(TorchEngine, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            calls[_name].append(time.monotonic())
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(TorchEngine, name, spy)
    record = run(tiny_model_dir, warmup={"batches": 0})
    phases = record["phases"]
    inside = lambda t, w: w["start_mono"] <= t <= w["end_mono"]  # noqa: E731
    assert len(calls["load"]) == 1 and inside(calls["load"][0], phases["load"])
    assert calls["generate"] and all(inside(t, phases["generate"]) for t in calls["generate"])
    assert phases["load"]["end_mono"] <= phases["generate"]["start_mono"]


def test_batched_and_single_give_the_same_greedy_tokens(tiny_model_dir):
    one = run(tiny_model_dir, generation={"batch_size": 1}, workload={"count": 4})
    four = run(tiny_model_dir, generation={"batch_size": 4}, workload={"count": 4})
    from runners.agreement import token_agreement

    agreement = token_agreement(four, one)
    assert agreement["prompts"] == 4 and agreement["share_identical"] == 1.0


def _first_token_is_eos_model(model_dir, tmp_path):
    """A copy of the model whose config.json and generation_config.json name its first greedy token as EOS."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    prompt = [tok("def add(a, b):")["input_ids"]]
    first = generate_ids(AutoModelForCausalLM.from_pretrained(model_dir), tok, prompt, 3, frozenset(),
                            lambda: None)[0][0]
    eos_dir = tmp_path / "eos-model"
    shutil.copytree(model_dir, eos_dir)
    for name in ("config.json", "generation_config.json"):
        path = eos_dir / name
        data = json.loads(path.read_text())
        data["eos_token_id"] = first
        path.write_text(json.dumps(data))
    return eos_dir, tok, prompt, first


def test_fixed_length_ignores_eos_and_stop_at_eos_stops(tiny_model_dir, tmp_path):
    """Make the first greedy token the EOS: fixed length must still give N tokens, stop-at-EOS exactly one."""
    from transformers import AutoModelForCausalLM

    eos_dir, tok, prompt, first = _first_token_is_eos_model(tiny_model_dir, tmp_path)
    eos = eos_ids(tok, eos_dir)
    assert eos == {tok.eos_token_id, first}  # the one rule: the tokenizer's EOS and config.json's eos_token_id
    model = AutoModelForCausalLM.from_pretrained(eos_dir)
    assert len(generate_ids(model, tok, prompt, 6, frozenset(), lambda: None)[0]) == 6
    assert generate_ids(model, tok, prompt, 6, eos, lambda: None)[0] == [first]


def test_engines_stop_on_the_eos_ids_of_their_context_not_their_own(tiny_model_dir, tmp_path):
    """The runner computes the EOS ids once and gives them in the context: an engine stops on those, whatever the
    tokenizer or the model's configs say (an engine deriving its own set fails both halves)."""
    from runners.engines.options import EngineContext
    from runners.engines.torch_engine import TorchEngine
    from runners.runner import work_shape

    eos_dir, tok, prompt, first = _first_token_is_eos_model(tiny_model_dir, tmp_path)
    assert first != tok.eos_token_id

    def generate(model_dir, eos):
        ctx = EngineContext(device="cpu", precision="fp32", model_dir=model_dir, model_name="tiny", cache_dir=None,
                            eos_ids=frozenset(eos))
        engine = TorchEngine(ctx, tok, TorchEngine.check_options({}))
        job = parse_job({"engine": "torch", "device": "cpu", "model": {"path": str(model_dir)},
                         "generation": {"new_tokens": 6, "fixed_length": False}})
        engine.load(work_shape(job, prompt))
        return engine.generate(prompt, 6, False, lambda: None)[0]

    full = generate(eos_dir, {-1})  # the model's configs name `first` as EOS; the context names none it writes
    assert len(full) == 6 and full[0] == first
    assert generate(tiny_model_dir, {first}) == [first]  # the tokenizer's EOS is another id: the context's holds
    assert generate(tiny_model_dir, {full[2]}) == full[:full.index(full[2]) + 1]


def test_record_with_meters_idle_and_estimated_energy(tiny_model_dir):
    record = run(tiny_model_dir, meters={"codecarbon": True, "idle_seconds": 0.3})
    gen = record["phases"]["generate"]
    assert {"load", "warmup", "generate", "prepare"} <= set(record["phases"])
    sources = {f["component"]: f["source"] for f in gen["energy"]}
    # This machine has no RAPL and no NVML: CPU and RAM are codecarbon estimates, GPU is unavailable.
    if not record["environment"]["meters"]["rapl"]:
        assert sources["cpu"] == "estimated" and gen["energy_total"]["measured_j"] is None
        assert record["metrics"]["joules_per_token"]["estimated"] > 0
        assert record["metrics"]["joules_per_token"]["measured"] is None
    assert record["idle"]["duration_s"] >= 0.3
    assert record["co2"]["intensity_g_per_kwh"] > 0
    env = record["environment"]
    assert env["libraries"]["torch"] and env["libraries"]["transformers"] and env["cpu_model"]


def test_smollm2_real_model_on_cpu(smollm2_dir):
    record = run(smollm2_dir, workload={"count": 6}, generation={"new_tokens": 24},
                 meters={"codecarbon": True})
    assert record["status"] == "ok", record["error"]
    assert record["model"]["parameters"] == pytest.approx(134.5e6, rel=0.02)
    assert record["tokens"]["output"] == 6 * 24
    gen = record["phases"]["generate"]
    assert gen["duration_s"] > record["per_prompt"][0]["latency_s"]
    assert gen["energy_total"]["estimated_j"] > 0 or gen["energy_total"]["measured_j"] > 0
    tok = load_tokenizer(smollm2_dir)
    text = tok.decode(record["per_prompt"][0]["output_ids"])
    assert text.strip(), "a real model writes something"
    # the text the evaluation runs: decoded after the window, up to the first EOS (a fixed-length run goes past it)
    for p in record["per_prompt"]:
        ids, eos = p["output_ids"], p["eos_at"]
        assert eos is None or (ids[eos] == tok.eos_token_id and tok.eos_token_id not in ids[:eos])
        assert p["output_text"] == tok.decode(ids if eos is None else ids[:eos], skip_special_tokens=True)
    # the instruct model answers HumanEval's full prompts and stops: an EOS within 160 tokens on some prompt
    full = run(smollm2_dir, workload={"count": 3, "style": "full"}, generation={"new_tokens": 160})
    assert any(p["eos_at"] is not None for p in full["per_prompt"])
    assert all(len(p["output_text"]) > 0 for p in full["per_prompt"])


@pytest.mark.skipif(cuda_problem() is not None, reason=f"no CUDA here: {cuda_problem()}")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_generation_with_nvml_energy(tiny_model_dir, precision):
    record = run(tiny_model_dir, device="cuda", precision=precision)
    assert record["status"] == "ok", record["error"]
    gen = record["phases"]["generate"]
    assert any(f["component"].startswith("gpu:") and f["source"] == "measured" for f in gen["energy"])


def test_as_served_stops_by_the_runners_rule_at_the_same_tokens_as_same_work(tiny_model_dir):
    """The stop rule cuts a sequence after the first token whose text completes a stop sequence: as served, torch
    stops there, and its tokens are the same-work run's tokens up to that point."""
    from runners.stopping import StopRule

    same = run(tiny_model_dir, generation={"new_tokens": 24})
    served = run(tiny_model_dir, generation={"new_tokens": 24, "fixed_length": False, "stop_sequences": ["e", "\n"]})
    assert served["status"] == "ok" and served["stopping"]["inconsistent"] == 0, served["stopping"]
    assert served["stopping"]["steps_past_end"] == 0  # the stopping criterion ends generation at the token
    rule = StopRule(load_tokenizer(tiny_model_dir), ("e", "\n"))
    stopped = 0
    for full, cut in zip(same["per_prompt"], served["per_prompt"]):
        hit = rule.first_hit(full["output_ids"])
        expected = full["output_ids"] if hit is None else full["output_ids"][: hit + 1]
        assert cut["output_ids"] == expected
        assert cut["ended_by"] == ("budget" if hit is None else "stop")
        stopped += hit is not None
    assert stopped > 0  # the rule did stop something (a near-random model writes "e" soon)


def test_an_engine_that_stops_elsewhere_is_seen():
    from runners.stopping import StopRule, check

    class Chars:  # a tokenizer whose token i is the i-th character
        def decode(self, ids, skip_special_tokens=True):
            return "".join("abcde\n"[i] for i in ids)

    rule = StopRule(Chars(), ("d",))
    assert check([0, 1, 3], {5}, rule, 8) == {"by": "stop", "expected_tokens": 3, "consistent": True}
    assert check([0, 1, 3, 2], {5}, rule, 8)["consistent"] is False  # one token late
    assert check([0, 1], {5}, rule, 8)["consistent"] is False  # stopped early without a reason
    assert check([0, 5, 3], {5}, rule, 8) == {"by": "eos", "expected_tokens": 2, "consistent": False}
    assert check([0, 1, 2], {5}, None, 3) == {"by": "budget", "expected_tokens": 3, "consistent": True}


@pytest.mark.parametrize("arch", fixtures.MODERN_ARCHITECTURES)
def test_todays_architectures_generate_exactly_and_batching_keeps_the_tokens(arch):
    """Gemma 2/3, Qwen 2/3, Llama 3, Phi-3, StarCoder2, SmolLM3, Mistral: tiny random-weight models with each one's
    trait (sliding windows of 16 tokens, shorter than prompt + new tokens; QK-norm; llama3 rope; NoPE layers) load
    through the same path as hub models and generate exactly N tokens; batch 4 (left-padded) gives batch 1's tokens."""
    model = fixtures.build_tiny(arch, fixtures.default_root() / fixtures.fixture_name(arch))
    single = run(model, generation={"new_tokens": 24})
    batched = run(model, generation={"new_tokens": 24, "batch_size": 4})
    for rec in (single, batched):
        assert rec["status"] == "ok", rec["error"]
        assert [p["generated_tokens"] for p in rec["per_prompt"]] == [24] * 4
    shape = single["workload"]["shape"]
    assert shape["longest_prompt"] + 24 > fixtures.SLIDING_WINDOW  # the window is crossed
    assert [p["output_ids"] for p in batched["per_prompt"]] == [p["output_ids"] for p in single["per_prompt"]]


def test_an_engine_that_runs_a_batch_one_prompt_after_another_fails_the_trial(tiny_model_dir, monkeypatch):
    """Torch made to loop over a batch's prompts (while still calling itself a padded batch): the trial fails with
    the reason instead of recording batch 1's figures as batch 4's; the same loop declared sequential is recorded."""
    from runners.engines.torch_engine import TorchEngine

    batched = TorchEngine.generate

    def in_turn(self, prompts, max_new_tokens, ignore_eos, on_step, stop=None):
        return [batched(self, [p], max_new_tokens, ignore_eos, on_step, stop)[0] for p in prompts]

    monkeypatch.setattr(TorchEngine, "generate", in_turn)
    record = run(tiny_model_dir, generation={"new_tokens": 6, "batch_size": 4}, warmup={"batches": 0})
    assert record["status"] == "failed" and record["error"]["type"] == "SerialisedBatch", record["error"]
    assert "24 decode steps for 4 prompts of 6 tokens" in record["error"]["message"]
    assert record["error"]["phase"] == "generate"

    honest = TorchEngine.describe
    monkeypatch.setattr(TorchEngine, "describe",
                        lambda self: {**honest(self), "batching": "sequential prompts (one at a time)"})
    record = run(tiny_model_dir, generation={"new_tokens": 6, "batch_size": 4}, warmup={"batches": 0})
    assert record["status"] == "ok" and record["per_prompt"][0]["decode_steps"] == 24


def test_an_engine_that_feeds_prompt_tails_in_its_decode_loop_is_a_real_batch(tiny_model_dir, monkeypatch):
    """CTranslate2 forwards a batch's common prompt length at once and feeds the longer prompts' last tokens inside
    its decode loop: one step more per token of length difference. Declared (describe: prompt_tail_in_decode_loop),
    those steps are neither a serialised batch nor steps past the end; undeclared, the same count is refused."""
    from runners.engines.torch_engine import TorchEngine

    batched = TorchEngine.generate

    def with_tail(self, prompts, max_new_tokens, ignore_eos, on_step, stop=None):
        for _ in range(max(map(len, prompts)) - min(map(len, prompts))):
            on_step()
        return batched(self, prompts, max_new_tokens, ignore_eos, on_step, stop)

    monkeypatch.setattr(TorchEngine, "generate", with_tail)
    work = {"generation": {"new_tokens": 1, "batch_size": 4}, "warmup": {"batches": 0}, "workload": {"style": "full"}}
    refused = run(tiny_model_dir, **work)
    assert refused["status"] == "failed" and refused["error"]["type"] == "SerialisedBatch", refused["error"]

    honest = TorchEngine.describe
    monkeypatch.setattr(TorchEngine, "describe", lambda self: {**honest(self), "prompt_tail_in_decode_loop": True})
    record = run(tiny_model_dir, **work)
    assert record["status"] == "ok", record["error"]
    lengths = [p["prompt_tokens"] for p in record["per_prompt"]]
    assert record["per_prompt"][0]["decode_steps"] == 1 + max(lengths) - min(lengths) >= 4  # looked serialised
    served = run(tiny_model_dir, **{**work, "generation": {"new_tokens": 4, "batch_size": 4, "fixed_length": False}})
    assert served["status"] == "ok" and served["stopping"]["steps_past_end"] == 0, served["stopping"]


def test_sampling_is_seeded_exact_length_and_not_greedy(tiny_model_dir):
    """generation.sampling: exactly N tokens, the same tokens for the same seed (whatever ran before: warm-up),
    other tokens for another seed, and not the greedy ones (a tiny random model's logits are nearly flat)."""
    def outputs(warmup=1, **generation):
        rec = run(tiny_model_dir, generation={"new_tokens": 8, **generation}, warmup={"batches": warmup})
        assert rec["status"] == "ok", rec["error"]
        assert all(p["generated_tokens"] == 8 for p in rec["per_prompt"])
        return [p["output_ids"] for p in rec["per_prompt"]], rec

    greedy, _ = outputs()
    sampled, rec = outputs(sampling={"temperature": 1.0, "top_p": 0.9, "seed": 7})
    again, _ = outputs(sampling={"temperature": 1.0, "top_p": 0.9, "seed": 7}, warmup=0)
    other, _ = outputs(sampling={"temperature": 1.0, "top_p": 0.9, "seed": 8})
    assert rec["job"]["generation"]["sampling"] == {"temperature": 1.0, "top_p": 0.9, "seed": 7}
    assert sampled != greedy and other != sampled and again == sampled
