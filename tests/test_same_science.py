"""studies/same_science.py: its refusals of bad input, before any run or checkout (its real runs take hours)."""
import importlib.util

from conftest import REPO, exit_code_and_output

spec = importlib.util.spec_from_file_location("studies_same_science", REPO / "studies" / "same_science.py")
same_science = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_science)


def refused(argv, capsys):
    """same_science.py's stderr where it must refuse argv: exit 2, one error line, no traceback."""
    code, _, err = exit_code_and_output(lambda: same_science.main(argv), capsys)
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    return err


def test_an_unknown_baseline_commit_is_one_line_and_creates_nothing(tmp_path, capsys):
    argv = ["--work", str(tmp_path / "work"), "--data", str(tmp_path), "--baseline", "no-such-commit"]
    assert "--baseline no-such-commit" in refused(argv, capsys)
    assert not (tmp_path / "work").exists()


def test_a_baseline_holding_a_newline_is_shown_quoted_on_one_line(tmp_path, capsys):
    argv = ["--work", str(tmp_path / "work"), "--data", str(tmp_path), "--baseline", "HEAD\ntouch x"]
    err = refused(argv, capsys)
    assert err.count("\n") == 1 and "'HEAD\\ntouch x'" in err, err


def test_a_work_path_that_is_a_file_is_one_line_and_left_alone(tmp_path, capsys):
    work = tmp_path / "work"
    work.write_text("mine\n")
    assert "--work" in refused(["--work", str(work), "--data", str(tmp_path)], capsys)
    assert work.read_text() == "mine\n"
