"""The HumanEval workload: 164 tasks, the study's fragment protocol (seeded, 10–15 tokens), selection."""

from __future__ import annotations

from _models import smollm2_dir, tiny_model_dir, tiny_models  # noqa: F401  (pytest fixtures)
import pytest

from runners.job import WorkloadSpec
from runners.runner import load_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runners.workload import (encode, humaneval_tasks, load_prompts, of_length, tokenizer_files,
                              tokenizer_identity)


def test_humaneval_has_164_tasks_in_order():
    tasks = humaneval_tasks()
    assert len(tasks) == 164
    assert [t["task_id"] for t in tasks[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert tasks[-1]["task_id"] == "HumanEval/163"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_fragments_are_10_to_15_tokens_and_reproducible(tokenizer):
    spec = WorkloadSpec(style="fragment", seed=2412)
    prompts = load_prompts(spec, tokenizer)
    assert len(prompts) == 164
    assert all(10 <= n_tokens(tokenizer, p.text) <= 15 for p in prompts)
    # every fragment is a piece of its own task's prompt
    tasks = {t["task_id"]: t["prompt"] for t in humaneval_tasks()}
    assert all(p.text in tasks[p.task_id] for p in prompts if p.method == "line")
    again = load_prompts(spec, tokenizer)
    assert [p.text for p in again] == [p.text for p in prompts]
    other = load_prompts(WorkloadSpec(style="fragment", seed=7), tokenizer)
    assert sum(a.text != b.text for a, b in zip(prompts, other)) > 100


def test_fragment_of_a_task_does_not_depend_on_the_selection(tokenizer):
    everything = {p.task_id: p.text for p in load_prompts(WorkloadSpec(seed=1), tokenizer)}
    sample = load_prompts(WorkloadSpec(seed=1, count=10, selection="sample"), tokenizer)
    assert len(sample) == 10 and [p.index for p in sample] == list(range(10))
    assert all(everything[p.task_id] == p.text for p in sample)
    ids = [int(p.task_id.split("/")[1]) for p in sample]
    assert ids == sorted(ids) and ids != list(range(10))
    assert [p.task_id for p in load_prompts(WorkloadSpec(seed=1, count=3), tokenizer)] == \
        ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_full_prompts_are_the_task_prompts(tokenizer):
    prompts = load_prompts(WorkloadSpec(style="full", count=5), tokenizer)
    tasks = humaneval_tasks()
    assert [p.text for p in prompts] == [t["prompt"] for t in tasks[:5]]


def test_fragments_under_the_real_smollm2_tokenizer(smollm2_dir):
    tok = load_tokenizer(smollm2_dir)
    prompts = load_prompts(WorkloadSpec(seed=2412), tok)
    assert len(prompts) == 164 and all(10 <= n_tokens(tok, p.text) <= 15 for p in prompts)


def test_encode_gives_every_prompt_its_ids(tokenizer):
    prompts = encode(load_prompts(WorkloadSpec(count=3), tokenizer), tokenizer)
    assert [list(p.ids) for p in prompts] == [tokenizer(p.text)["input_ids"] for p in prompts]


def test_the_tokenizer_is_identified_by_its_files_and_libraries(tokenizer, tiny_model_dir, tmp_path):
    import shutil

    ident = tokenizer_identity(tokenizer, tiny_model_dir)
    assert ident["class"] == type(tokenizer).__name__ and ident["transformers"]
    assert "tokenizer.json" in ident["files"] and "config.json" not in ident["files"]
    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    assert tokenizer_files(copy)["sha256"] == ident["sha256"]  # the files, not where they are
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + " ")  # one byte more
    assert tokenizer_files(copy)["sha256"] != ident["sha256"]


# --- prompts of a given length (style "length"): prompt length as a controlled variable --------------------------


@pytest.fixture(scope="module")
def every_tokenizer(tiny_models, smollm2_dir):
    """The tokenizers of every fixture architecture (BPE with and without BOS, sentencepiece-style) and SmolLM2's."""
    return {**{arch: load_tokenizer(path) for arch, path in tiny_models.items()}, "smollm2": load_tokenizer(smollm2_dir)}


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arch=st.sampled_from(["gpt2", "gpt_bigcode", "gpt_neox", "bloom", "llama", "gemma", "phi", "smollm2"]),
       task=st.integers(min_value=0, max_value=163), n=st.integers(min_value=8, max_value=700))
def test_a_length_prompt_has_exactly_n_input_ids_under_every_tokenizer(every_tokenizer, arch, task, n):
    tok = every_tokenizer.get(arch)
    if tok is None:
        pytest.skip(f"no fixture architecture {arch}")
    spec = WorkloadSpec(style="length", prompt_tokens=n, count=None)
    text = of_length(humaneval_tasks(), task, n, tok)
    assert len(tok(text)["input_ids"]) == n
    # the task's own prompt comes first
    own = humaneval_tasks()[task]["prompt"].lstrip()
    if len(text.strip()) >= 10:
        assert text.lstrip()[:10] == own[:10]
    assert spec.as_dict()["prompt_tokens"] == n


def test_length_prompts_are_encoded_to_n_ids_and_do_not_depend_on_the_selection(tokenizer):
    everything = {p.task_id: p for p in load_prompts(WorkloadSpec(style="length", prompt_tokens=48), tokenizer)}
    assert len(everything) == 164 and {p.method for p in everything.values()} == {"length"}
    sample = encode(load_prompts(WorkloadSpec(style="length", prompt_tokens=48, count=5, selection="sample", seed=3),
                                 tokenizer), tokenizer)
    assert [len(p.ids) for p in sample] == [48] * 5
    assert all(everything[p.task_id].text == p.text for p in sample)
    # a long prompt runs on into the next tasks' prompts
    long = load_prompts(WorkloadSpec(style="length", prompt_tokens=600, count=1), tokenizer)[0]
    assert humaneval_tasks()[1]["prompt"][:30] in long.text


def test_a_length_the_tokenizer_cannot_make_names_the_field(every_tokenizer):
    from runners.errors import JobError

    # GPT-2's "\n\n" is one id alone and two before "def": no prefix of HumanEval/2 is two ids long
    with pytest.raises(JobError, match="HumanEval/2 onwards encodes into exactly 2 input ids") as e:
        of_length(humaneval_tasks(), 2, 2, every_tokenizer["gpt2"])
    assert e.value.field == "workload.prompt_tokens"


def test_a_workload_without_prompt_tokens_is_stored_as_before():
    assert "prompt_tokens" not in WorkloadSpec(style="full").as_dict()
