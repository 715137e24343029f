"""The benchmarks and studies are scripts, not tests: here each one is only imported, as
`python bench/NAME.py` or `python studies/NAME.py` would import it, without running its main()."""
import importlib.util

import pytest

from conftest import REPO

SCRIPTS = sorted((REPO / "bench").glob("*.py")) + sorted((REPO / "studies").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_imports(script):
    spec = importlib.util.spec_from_file_location(f"{script.parent.name}_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__, f"{script.name} says what it is for in its docstring"
