"""The set-up promise: exact pins for every supported Python, and one clear line for a Python
that cannot work (checked through the Makefile, as a user meets it)."""
import importlib.util
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("check_python", REPO / "tools" / "check_python.py")
check_python = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_python)

(OLDEST_MINOR, NEWEST_MINOR) = (v[1] for v in check_python.SUPPORTED)
SUPPORTED = ["3.%d" % minor for minor in range(OLDEST_MINOR, NEWEST_MINOR + 1)]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def requirements():
    requirement = pytest.importorskip("packaging.requirements").Requirement
    lines = (line.strip() for line in (REPO / "requirements.txt").read_text().splitlines())
    return [requirement(line) for line in lines if line and not line.startswith("#")]


def test_supported_range_is_what_the_docs_and_ci_promise():
    readme, setup = (REPO / "README.md").read_text(), (REPO / "docs" / "setup.md").read_text()
    assert re.findall(r"^\| (3\.\d+) \|", setup, re.M) == SUPPORTED  # the set-up table: a row per Python
    for page in (readme, setup):
        assert set(re.findall(r"\b3\.\d+-3\.\d+\b", page)) == {SUPPORTED[0] + "-" + SUPPORTED[-1]}
    ci = re.search(r"`([^`]+)` calls exactly `make test`.*?oldest\s+and\s+the\s+newest\s+supported\s+Python,\s+"
                   r"(3\.\d+)\s+and\s+(3\.\d+),", readme, re.S)
    assert ci, "README.md no longer names its CI script, the test command it calls and the Pythons it tests"
    assert [ci[2], ci[3]] == [SUPPORTED[0], SUPPORTED[-1]]
    script = (REPO / ci[1]).read_text()
    assert re.search(r"^make test ", script, re.M)  # the README's test command, as a user types it
    assert re.search(r"^for version in (.*); do$", script, re.M)[1].split() == [SUPPORTED[0], SUPPORTED[-1]]


def test_every_requirement_is_an_exact_pin():
    for req in requirements():
        assert [spec.operator for spec in req.specifier] == ["=="], str(req)


@pytest.mark.parametrize("python", SUPPORTED)
def test_one_pin_per_package_for_each_supported_python(python):
    env = {"python_version": python, "python_full_version": python + ".0"}
    chosen = [req.name for req in requirements() if req.marker is None or req.marker.evaluate(env)]
    everything = {req.name for req in requirements()}
    assert sorted(chosen) == sorted(everything), "missing or doubled pin for Python " + python


def test_problem_names_what_to_install():
    assert check_python.problem((3, 9), "python3", True).startswith(
        "error: Python 3.9 is too old; this project needs 3.10-3.13 (install python3.12")
    assert check_python.problem((3, 10), "python3", False) == (
        "error: python3 has no venv module: install it (Debian/Ubuntu: sudo apt install python3.10-venv)")
    assert check_python.problem((3, 10), "python3", True) is None
    assert check_python.problem((3, 13), "python3", True) is None


def make_test(tmp_path, stub):
    """`make test` with this Python, made to look old or venv-less by a sitecustomize or a shadowing
    module on PYTHONPATH; a private VENV, so nothing real is touched."""
    (tmp_path / "stub").mkdir()
    for name, text in stub.items():
        (tmp_path / "stub" / name).write_text(text)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "stub"), "HOME": str(tmp_path)}
    venv = tmp_path / "venv"
    done = subprocess.run(["make", "--no-print-directory", "test", "PYTHON=" + sys.executable,
                           "VENV=" + str(venv)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert not venv.exists()
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout.splitlines()


@pytest.mark.slow
@needs_make
def test_make_stops_a_too_old_python_with_one_line(tmp_path):
    old = "import sys\nsys.version_info = (3, 9, 18, 'final', 0)\n"
    assert make_test(tmp_path, {"sitecustomize.py": old}) == [
        "error: Python 3.9 is too old; this project needs 3.10-3.13 "
        "(install python3.12, then: make test PYTHON=python3.12)"]


@pytest.mark.slow
@needs_make
def test_make_stops_a_python_without_venv_with_one_line(tmp_path):
    hidden = "raise ImportError('hidden by the test, as on Debian without python3.X-venv')\n"
    lines = make_test(tmp_path, {"ensurepip.py": hidden})
    assert len(lines) == 1 and " has no venv module: install it (Debian/Ubuntu: sudo apt install python3." in lines[0]


@pytest.mark.slow
@needs_make
@pytest.mark.parametrize("made_with, rebuilds", [("same", False), ("2.7", True)])
def test_make_rebuilds_a_venv_made_by_another_python(tmp_path, made_with, rebuilds):
    here = "%d.%d" % sys.version_info[:2]
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "installed").write_text((here if made_with == "same" else made_with) + "\n")
    plan = subprocess.run(["make", "-n", "test", "PYTHON=" + sys.executable, "VENV=" + str(tmp_path / "venv")],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert ("-m venv --clear" in plan) == rebuilds
    assert "-m pytest -q tests" in plan


@pytest.mark.slow
@needs_make
def test_make_setup_builds_the_venv_and_runs_nothing_else(tmp_path):
    plan = subprocess.run(["make", "-n", "setup", "PYTHON=" + sys.executable, "VENV=" + str(tmp_path / "venv")],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "-m venv --clear" in plan and "-m pip install -r requirements.txt" in plan
    assert "-m pytest" not in plan and "reproduce.py" not in plan
