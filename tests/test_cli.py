import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from common.cli import OUTCOME, UserError, run_main, signals_as_ctrl_c
from conftest import REPO, exit_code_and_output


def fail_with(error):
    def main():
        raise error
    return main


def test_user_error_is_one_line_and_exit_2(capsys):
    code, _, err = exit_code_and_output(fail_with(UserError("--data x: no such folder")), capsys)
    assert (code, err) == (2, "error: --data x: no such folder\n")


def test_an_os_error_no_check_caught_is_one_line_and_exit_2(capsys):
    error = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "/tmp/" + "a" * 300)
    code, _, err = exit_code_and_output(fail_with(error), capsys)
    assert code == 2 and err == f"error: File name too long: /tmp/{'a' * 300}\n"


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    code, _, err = exit_code_and_output(fail_with(KeyboardInterrupt()), capsys)
    assert code == 130 and err.strip() == "interrupted"


def send_to_self(signum):
    def main():
        os.kill(os.getpid(), signum)  # its Python handler runs before the next line
        raise AssertionError(f"{signal.Signals(signum).name} did not stop main")
    return main


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_outside_a_run_stops_a_script_as_ctrl_c_does(signum, default_signals, capsys):
    code, _, err = exit_code_and_output(send_to_self(signum), capsys)
    assert code == 130 and err.strip() == "interrupted"  # before: killed by the signal, no line, no clean-up
    assert signal.getsignal(signum) == signal.SIG_DFL  # restored


def test_sigterm_stops_a_script_whose_ctrl_c_is_ignored(default_signals, capsys):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job
    code, _, err = exit_code_and_output(send_to_self(signal.SIGTERM), capsys)
    assert code == 130 and err.strip() == "interrupted"


def test_a_signal_ignored_at_start_stays_ignored(default_signals):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    with signals_as_ctrl_c():
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert callable(signal.getsignal(signal.SIGTERM))
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_other_exceptions_are_not_hidden():
    with pytest.raises(ZeroDivisionError):
        run_main(lambda: 1 / 0)


def test_unavailable_weights_exit_3_so_reproduce_can_tell_them_from_errors(capsys):
    from common.weights import WeightsUnavailable
    error = WeightsUnavailable("vgg16-397923af.pth is not in ~/.cache")
    code, _, err = exit_code_and_output(fail_with(error), capsys)
    assert (code, err) == (3, "error: vgg16-397923af.pth is not in ~/.cache\n")


def test_a_failure_is_also_written_to_the_outcome_file_a_parent_names(tmp_path, monkeypatch, capsys):
    from common.weights import WeightsUnavailable
    monkeypatch.setenv(OUTCOME, str(tmp_path / "outcome.json"))
    code, _, _ = exit_code_and_output(fail_with(WeightsUnavailable("vgg16-397923af.pth is missing")), capsys)
    assert code == 3 and json.loads((tmp_path / "outcome.json").read_text()) == \
        {"exit_code": 3, "error": "vgg16-397923af.pth is missing"}


@pytest.mark.slow
def test_scripts_compute_denormals_as_zero_in_every_thread():
    # a subprocess: in this one torch's thread pool is already running, and its threads keep their mode
    script = ("import torch\nfrom common.cli import run_main\n"
              "def main():\n"
              "    tiny = torch.full((1_000_000,), 700_000, dtype=torch.int32).view(torch.float32)  # 1e-39, no arithmetic\n"
              "    print(torch.get_num_threads(), int((tiny * 1.5).count_nonzero()))\n"
              "run_main(main)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout
    assert out.split() == ["2", "0"]


def test_a_lost_torchrun_peer_is_one_line_that_claims_no_error_above(monkeypatch, capsys):
    # A rank killed by SIGKILL printed nothing: the survivors must not promise its error.
    monkeypatch.setattr("common.cli.lost_peer", lambda error: True)
    code, _, err = exit_code_and_output(fail_with(RuntimeError("Connection closed by peer")), capsys)
    assert code == 2 and err == "error: another process of this torchrun job stopped; its error, if any, is above\n"
