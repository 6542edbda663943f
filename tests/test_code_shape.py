"""The shape issue 23 gave the code, kept: every derived figure computed in the record's reader, one agreement
threshold, no import cycle, no two-way folder dependency, no file or function grown past what a reader can hold
(scripts/code_figures.py measures; `python scripts/code_figures.py --list` names what broke it)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def shape():
    spec = importlib.util.spec_from_file_location("code_figures", REPO / "scripts" / "code_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name.split(" ")[0] if name.startswith("fallback") else name: value
            for name, value in module.figures(quiet=True).items()}


def test_every_derived_figure_has_one_home(shape):
    assert shape["modules computing J/token"][1] == ["runners/record/build.py"]
    assert shape["modules choosing measured-else-estimated"][1] == ["runners/record/energy.py"]
    assert shape["literal 0.95"][1] == {"runners/agreement.py": 1}  # the agreement threshold, once


def test_records_are_read_through_the_reader(shape):
    assert shape["fallback"][0] < 10, shape["fallback"][1]


def test_no_cycles_and_nothing_too_long_to_read(shape):
    assert shape["import cycles"] == (0, [])
    assert shape["folder-level two-way dependencies"] == (0, [])
    assert shape["files over 400 lines"][0] <= 3, shape["files over 400 lines"][1]
    assert shape["functions over 80 lines"][0] <= 3, shape["functions over 80 lines"][1]
