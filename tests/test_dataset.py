"""The built-in math dataset: committed files match the script, and every step checks out."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
SCRIPT = DATA / "make_math_dataset.py"
COMMITTED = DATA / "training_data"
FILES = ("train_flattened.json", "eval.json")
FINAL = re.compile(r"^#### -?\d+$")
# `<expr> = <int>`, possibly at the end of a sentence; the expression is digits,
# spaces, + - * / and parentheses only.
STEP = re.compile(r"(?P<expr>[\d+\-*/() ]*\d[\d+\-*/() ]*?) = (?P<value>-?\d+)\b")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_math_dataset", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building classes
    spec.loader.exec_module(module)
    return module


def _exact(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _exact(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_exact(node.operand)
    if isinstance(node, ast.BinOp):
        ops = {
            ast.Add: lambda a, b: a + b,
            ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b,
            ast.Div: lambda a, b: a / b,
        }
        op = ops.get(type(node.op))
        assert op is not None, f"operator {type(node.op).__name__} not allowed"
        return op(_exact(node.left), _exact(node.right))
    raise AssertionError(f"{type(node).__name__} not allowed in an arithmetic step")


def _load(path: Path) -> list[dict[str, str]]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def committed() -> dict[str, list[dict[str, str]]]:
    return {name: _load(COMMITTED / name) for name in FILES}


def test_script_reproduces_committed_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)], check=True)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), name


def test_counts_shape_and_no_overlap(committed: dict[str, list[dict[str, str]]]) -> None:
    train, evaluation = committed["train_flattened.json"], committed["eval.json"]
    assert len(train) == 81
    assert len(evaluation) == 240
    for row in train + evaluation:
        assert set(row) == {"question", "answer"}
        assert isinstance(row["question"], str) and isinstance(row["answer"], str)
        assert "<<" not in row["answer"]
    train_q = [row["question"] for row in train]
    eval_q = [row["question"] for row in evaluation]
    assert len(set(train_q)) == len(train_q)
    assert len(set(eval_q)) == len(eval_q)
    assert not set(train_q) & set(eval_q)


def test_every_step_is_correct(committed: dict[str, list[dict[str, str]]]) -> None:
    for name, rows in committed.items():
        for i, row in enumerate(rows):
            where = f"{name} row {i}"
            lines = row["answer"].split("\n")
            assert FINAL.match(lines[-1]), where
            final = int(lines[-1].removeprefix("#### "))
            results = []
            for line in lines[:-1]:
                if " = " not in line:
                    continue
                match = STEP.search(line)
                assert match, f"{where}: no `<expr> = <int>` in {line!r}"
                expr, value = match["expr"].strip(), int(match["value"])
                computed = _exact(ast.parse(expr, mode="eval"))
                assert computed == value, f"{where}: {expr} is {computed}, not {value}"
                results.append(value)
            assert 2 <= len(results) <= 5, where
            assert results[-1] == final, where


def test_problem_types_balanced() -> None:
    module = _load_script()
    assert len(module.PROBLEM_TYPES) >= 12
    train, evaluation = module.generate_typed(2024, 81, 240)
    names = {module.type_name(g) for g in module.PROBLEM_TYPES}
    train_counts = Counter(kind for kind, _ in train)
    assert set(train_counts) == names
    assert min(train_counts.values()) >= 4
    assert set(Counter(kind for kind, _ in evaluation)) == names
    rows_train, rows_eval = module.generate(2024, 81, 240)
    assert rows_train == [row for _, row in train]
    assert rows_eval == [row for _, row in evaluation]


def test_other_seed_differs_and_is_deterministic() -> None:
    module = _load_script()
    first = module.generate(7, 20, 30)
    assert first == module.generate(7, 20, 30)
    assert first != module.generate(8, 20, 30)
