"""The stop rule of an as-served run, owned by the runner: a sequence stops after the first new token whose text
(decoded with the job's tokenizer, special tokens skipped) contains one of the stop sequences.

Every engine applies this one rule: the transformers-based engines through a stopping criterion that calls it, the
llama.cpp loop after each token, vLLM through its own ``stop`` (the same definition: the first token completing a
stop string). After generation the runner checks each output against the rule (``check``): stopped exactly there,
or at EOS, or at the budget — so an engine that stops a token late or early is seen, not averaged in.
"""

from __future__ import annotations

from typing import Any


class StopRule:
    def __init__(self, tokenizer: Any, sequences: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.sequences = tuple(sequences)

    def hit(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return any(s in text for s in self.sequences)

    def first_hit(self, ids: list[int]) -> int | None:
        """Index of the token after which the rule stops, or None."""
        for t in range(len(ids)):
            if self.hit(ids[: t + 1]):
                return t
        return None


def check(ids: list[int], eos: set[int], rule: StopRule | None, budget: int) -> dict[str, Any]:
    """How one output ended, and whether that is where the rule says: {"by": "eos"|"stop"|"budget"|"none",
    "expected_tokens", "consistent"}."""
    ends = {"budget": budget}
    eos_at = next((i for i, t in enumerate(ids) if t in eos), None)
    if eos_at is not None:
        ends["eos"] = eos_at + 1
    hit = rule.first_hit(ids) if rule else None
    if hit is not None:
        ends["stop"] = hit + 1
    by, expected = min(ends.items(), key=lambda kv: (kv[1], kv[0] != "eos"))
    return {"by": by, "expected_tokens": expected, "consistent": expected == len(ids)}
