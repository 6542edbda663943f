"""The stop rule of an as-served run, owned by the runner: a sequence stops after the first new token whose text
(decoded with the job's tokenizer, special tokens skipped) contains one of the stop sequences.

Every engine applies this one rule: the transformers-based engines through a stopping criterion that calls it, the
llama.cpp loop after each token, vLLM through its own ``stop`` (the same definition: the first token completing a
stop string). After generation the runner checks each output against the rule (``check``): stopped exactly there,
or at EOS, or at the budget — so an engine that stops a token late or early is seen, not averaged in.

The end-of-sequence ids follow one rule too (``eos_ids``), computed once by the runner and given to every engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import AbstractSet, Any


def eos_ids(tokenizer: Any, model_dir: Path) -> frozenset[int]:
    """The ids that end a sequence: the tokenizer's EOS and config.json's ``eos_token_id`` (an int or a list) — the
    torch reference's rule, computed here once per trial for every engine and for the record's ``eos_at``."""
    try:
        configured = json.loads((Path(model_dir) / "config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):  # AttributeError: a config.json that is not an object
        configured = None
    values = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    return frozenset(v for v in values if isinstance(v, int) and not isinstance(v, bool))


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


def check(ids: list[int], eos: AbstractSet[int], rule: StopRule | None, budget: int) -> dict[str, Any]:
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
