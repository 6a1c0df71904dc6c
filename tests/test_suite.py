"""The suite's own arrangement (tests/conftest.py)."""

import ast
from pathlib import Path

from .conftest import LONGEST


def test_the_tests_started_first_are_tests_of_the_suite():
    """A renamed test would lose its place at the front without a word."""
    defined = {node.name for path in Path(__file__).parent.rglob("test_*.py")
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
    assert set(LONGEST) - defined == set()
