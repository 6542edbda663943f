"""Generation through the transformers ``generate`` API, shared by every engine whose model object speaks it (torch
eager and compiled, optimum's ONNX Runtime and OpenVINO models): left padding, KV cache, a fresh generation config —
greedy, or the job's sampling (temperature, top-p, seeded), so no model's own sampling defaults leak in — stopping on
the EOS ids it is given (the runner's, from the engine's context) and on no others: exactly N new tokens when that set
is empty.
"""

from __future__ import annotations

from typing import Any

from runners.engines.base import StepHook


def left_pad(prompts: list[list[int]], pad_id: int):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, mask


def pad_token_id(tokenizer: Any, model_config: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, getattr(model_config, "pad_token_id", None),
                      getattr(model_config, "eos_token_id", None), 0):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def generate_ids(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, eos: frozenset[int],
                    on_step: StepHook, device: Any = "cpu", stop: Any = None, sampling: Any = None,
                    seed: int = 0) -> list[list[int]]:
    """New ids per prompt; a row ends after a token of ``eos`` (empty: never) or the stop rule's token. ``sampling``
    (a SamplingSpec) samples instead of argmax, seeded with ``seed`` at every call (EngineContext.sampling_seed: of
    the batch's prompts), so a batch's tokens do not depend on how many batches (warm-up included) ran before it."""
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    class _StepClock(StoppingCriteria):
        # generate() calls stopping criteria once per step, right after the new tokens are appended; as served, the
        # runner's stop rule (runners/stopping.py) ends each row after the token that completes a stop sequence.
        def __call__(self, input_ids, scores, **kwargs):
            on_step()
            if stop is None:
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            new = input_ids[:, width:].tolist()
            return torch.tensor([stop.hit(row) for row in new], dtype=torch.bool, device=input_ids.device)

    config = model.config
    pad = pad_token_id(tokenizer, config)
    ids, mask = left_pad(prompts, pad)
    width = ids.shape[1]
    ids, mask = ids.to(device), mask.to(device)
    # sampled: temperature and top-p only (top_k 0 switches off the top-50 filter transformers adds by default)
    decoding = (dict(do_sample=False) if sampling is None else
                dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0))
    if sampling is not None:
        torch.manual_seed(seed)
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, **decoding, num_beams=1, use_cache=True, pad_token_id=pad,
        # eos None: the model keeps generating after EOS, so every prompt gets exactly max_new_tokens.
        eos_token_id=sorted(eos) or None,
        bos_token_id=getattr(config, "bos_token_id", None),
    )
    # transformers fills fields left at their default (eos None) from the model's own generation config, which
    # would stop on the model's EOS ids rather than the given ones: clear it on the model for the call.
    model_gen = getattr(model, "generation_config", None)
    saved_eos = getattr(model_gen, "eos_token_id", None)
    if model_gen is not None:
        model_gen.eos_token_id = None
    try:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config,
                                 stopping_criteria=StoppingCriteriaList([_StepClock()]))
    finally:
        if model_gen is not None:
            model_gen.eos_token_id = saved_eos
    new = out[:, ids.shape[1]:].tolist()
    if not eos and stop is None:
        return new
    trimmed = []
    for row in new:  # rows that ended early are padded afterwards: keep up to and including the EOS / stop token
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        if stop is not None:
            hit = stop.first_hit(row[:cut])
            cut = cut if hit is None else hit + 1
        trimmed.append(row[:cut])
    return trimmed
