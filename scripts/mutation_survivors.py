"""The mutants no test killed, each with its diff: `make mutation` prints this and writes it to a file.

Reads what mutmut recorded in mutants/ with mutmut's own readers (those of `mutmut results` and `mutmut show`, in
one process: a `mutmut show` per survivor costs seconds each). They are internals of the pinned version
(requirements-mutation.txt). Mutants left unchecked (another module than the one asked for) are not listed.

    .venv-mutation/bin/python scripts/mutation_survivors.py [--out FILE] [PREFIX ...]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

# what mutmut calls a mutant that no test failed on (or that it could not judge)
NOT_KILLED = ("survived", "no tests", "timeout", "suspicious", "segfault")


def results() -> list[tuple[str, str, Path]]:
    """(mutant name, status, source file) of every mutant, as `mutmut results --all true` lists them."""
    rows = []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        rows += [(name, status_by_exit_code[code], path) for name, code in data.exit_code_by_key.items()]
    return rows


def module_of(name: str) -> str:
    """analysis.stats.x_cliffs_delta__mutmut_3 -> analysis.stats"""
    return name.rsplit(".", 1)[0]


def report(rows: list[tuple[str, str, Path]], prefixes: list[str]) -> str:
    asked = [(n, s, p) for n, s, p in rows if not prefixes or any(n.startswith(x + ".") for x in prefixes)]
    checked = [(n, s) for n, s, _ in asked if s != "not checked"]
    left = sorted((n, s, p) for n, s, p in asked if s in NOT_KILLED)
    lines = ["Mutation testing: mutants no test killed", ""]
    per_module = Counter(module_of(n) for n, _ in checked)
    killed = Counter(module_of(n) for n, s in checked if s not in NOT_KILLED)
    for mod in sorted(per_module):
        alive = per_module[mod] - killed[mod]
        lines.append(f"  {mod}: {per_module[mod]} mutants, {killed[mod]} killed, {alive} not killed")
    if not checked:
        lines.append("  no mutant was checked: run `make mutation` first")
    lines += ["", f"{len(left)} not killed:"] + [f"  {n}: {s}" for n, s, _ in left] + [""]
    for name, status, path in left:
        lines += [f"# {name}: {status}", get_diff_for_mutant(name, path=path).rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prefixes", nargs="*", help="module prefixes to list, e.g. analysis.stats (default: all)")
    ap.add_argument("--out", type=Path, help="also write the list to this file")
    args = ap.parse_args(argv)
    text = report(results(), args.prefixes)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
