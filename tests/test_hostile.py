"""tools/hostile.py itself: it lists its cases and judges one fast case."""
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # every test runs tools/hostile.py in a process of its own
HOSTILE = REPO / "tools" / "hostile.py"


def hostile(*args):
    return subprocess.run([sys.executable, str(HOSTILE), *args], capture_output=True, text=True, timeout=300)


def test_list_names_every_case_once_and_selects_by_prefix():
    ids = [line.split()[0] for line in hostile("--list").stdout.splitlines()]
    assert len(ids) == len(set(ids)) and "28.6a" in ids and "9.1" in ids
    only = [line.split()[0] for line in hostile("--list", "--only", "28.1").stdout.splitlines()]
    assert only == ["28.1a", "28.1b", "28.1c", "28.1d"]  # not 28.10a..., 28.11a...


def test_a_fast_case_passes_and_is_counted():
    result = hostile("--only", "9.5a")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9.5a     PASS" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 cases, 1 pass, 0 fail")
