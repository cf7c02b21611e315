"""The benchmark scripts as modules: ``load_benchmark("name")`` imports ``benchmarks/name.py``
with the scripts' folder on ``sys.path`` (they import their siblings) for the test module."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def load_benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCHMARKS))
