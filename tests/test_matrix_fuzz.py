"""Malformed matrices through the CLI (`orchestrate.py plan --matrix F`): hypothesis mutates matrix-smoke.toml — keys
dropped, values of the wrong type or out of range, unknown keys and sections, the document cut short — and every
outcome is either a valid plan (exit 0) or exit 2 with exactly one line that names the key; never a traceback.

The default runs FUZZ_EXAMPLES examples per search, derandomized (~15 s for both); the larger, random search is
opt-in: `SLM_FUZZ_EXAMPLES=2000 python3 -m pytest tests/test_matrix_fuzz.py` (any count)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tomllib

from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import cli, tomlw

SMOKE = tomllib.loads((REPO / "matrix-smoke.toml").read_text())
FUZZ_EXAMPLES = 150
EXAMPLES = int(os.environ.get("SLM_FUZZ_EXAMPLES", FUZZ_EXAMPLES))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES == FUZZ_EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def paths(doc: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the document: sections, entries and their keys."""
    out = []
    for k, v in doc.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += paths(v, (*prefix, k))
    return out


PATHS = paths(SMOKE)
TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
SCALARS = st.one_of(st.integers(min_value=-10**20, max_value=10**20), st.floats(allow_nan=True), TEXT, st.booleans(),
                    st.sampled_from([0, -1, 1, 2**63, 0.0, -0.5, 1e308, "", "none", "fp16", "cuda", "llama"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(TEXT, SCALARS, max_size=2))


# keys the smoke matrix does not set, each given a random value by the "known" mutation: (where, key)
KNOWN = [(("matrix",), k) for k in ("runtimes", "models", "settings")] + \
    [(("agreement",), k) for k in ("engine", "precision", "devices", "threshold")] + \
    [(("container",), k) for k in ("mem_limit", "cpus", "shm_size", "timeout_s")] + \
    [(("host",), k) for k in ("gpus", "rapl_root", "idle_drift", "cooldown_margin_c", "trace_interval_s")] + \
    [(("settings", "s"), k) for k in ("precision", "generation", "sweep", "x")] + \
    [(("runtimes", "torch-cpu"), k) for k in ("engine_options", "settings", "image", "mem_limit", "cpus")] + \
    [(("models", "tiny-llama"), k) for k in ("hub_id", "path", "revision", "params_b", "group", "size", "tokenizer",
                                             "seed", "timeout_s")] + \
    [(("workload",), k) for k in ("dataset", "seed", "min_tokens", "max_tokens")] + \
    [(("generation",), k) for k in ("max_length", "stop_sequences", "temperature")]


@st.composite
def mutated(draw) -> tuple[dict, str]:
    """(the mutated document, the key the mutation touched)."""
    doc = copy.deepcopy(SMOKE)
    path = draw(st.sampled_from(PATHS))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    kind = draw(st.sampled_from(["drop", "value", "unknown", "unknown_section", "known"]))
    if kind == "known":
        where, name = draw(st.sampled_from(KNOWN))
        target = doc
        for k in where:
            target = target.setdefault(k, {})
        if where == ("settings", "s"):  # a new setting: valid but for the mutated key
            target.setdefault("precision", "fp32")
        target[name] = draw(VALUES)
        return doc, name
    if kind == "drop":
        del parent[path[-1]]
    elif kind == "value":
        parent[path[-1]] = draw(VALUES)
    elif kind == "unknown":
        target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
        name = draw(st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True))
        target[name] = draw(SCALARS)
        return doc, name
    else:
        name = draw(st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True))
        doc[name] = {"x": draw(SCALARS)}
        return doc, name
    return doc, path[-1]


def dumps(doc: dict) -> str:
    """TOML text of the document, a section that became a value written as a top-level key (before the tables)."""
    top = "".join(f"{tomlw.key(k)} = {tomlw.value(v)}\n" for k, v in doc.items() if not isinstance(v, dict))
    return top + tomlw.dumps({k: v for k, v in doc.items() if isinstance(v, dict)})


def plan(tmp_path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["plan", "--matrix", str(path), "--launcher", "process", "--results", str(tmp_path / "r"),
                         "--quiet"])
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


@FUZZ
@given(mutated())
def test_a_mutated_matrix_plans_or_names_the_key_in_one_line(tmp_path, case):
    doc, key = case
    code, out, err = plan(tmp_path, dumps(doc))
    if code == 0:
        assert err == "", err
        return
    line = one_line_error(code, err)
    assert key in line, f"the error does not name {key!r}: {line}"


@FUZZ
@given(st.integers(min_value=1, max_value=len(tomlw.dumps(SMOKE)) - 1))
def test_a_matrix_cut_short_is_one_line_never_a_traceback(tmp_path, cut):
    code, out, err = plan(tmp_path, tomlw.dumps(SMOKE)[:cut])
    if code != 0:
        one_line_error(code, err)


def test_the_searchs_findings_stay_fixed(tmp_path):
    """What the search found: a huge repetitions count expanded the plan until memory ran out; a runtime's image
    given as a list was a TypeError traceback."""
    doc = copy.deepcopy(SMOKE)
    doc["matrix"]["repetitions"] = 10**12
    assert "matrix.repetitions: must be ≤ 10000" in one_line_error(*plan(tmp_path, dumps(doc))[::2])
    doc = copy.deepcopy(SMOKE)
    doc["runtimes"]["onnx-cpu"]["image"] = []
    assert "runtimes.onnx-cpu.image: must be a string, got list" in one_line_error(*plan(tmp_path, dumps(doc))[::2])
