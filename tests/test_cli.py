import errno
import os

import pytest

from common.cli import UserError, run_main


def exit_and_stderr(main, capsys):
    with pytest.raises(SystemExit) as done:
        run_main(main)
    return done.value.code, capsys.readouterr().err


def fail_with(error):
    def main():
        raise error
    return main


def test_user_error_is_one_line_and_exit_2(capsys):
    code, err = exit_and_stderr(fail_with(UserError("--data x: no such folder")), capsys)
    assert (code, err) == (2, "error: --data x: no such folder\n")


def test_an_os_error_no_check_caught_is_one_line_and_exit_2(capsys):
    error = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "/tmp/" + "a" * 300)
    code, err = exit_and_stderr(fail_with(error), capsys)
    assert code == 2 and err == f"error: File name too long: /tmp/{'a' * 300}\n"


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    code, err = exit_and_stderr(fail_with(KeyboardInterrupt()), capsys)
    assert code == 130 and err.strip() == "interrupted"


def test_other_exceptions_are_not_hidden():
    with pytest.raises(ZeroDivisionError):
        run_main(lambda: 1 / 0)


def test_unavailable_weights_exit_3_so_reproduce_can_tell_them_from_errors(capsys):
    from common.backbones import WeightsUnavailable
    code, err = exit_and_stderr(fail_with(WeightsUnavailable("vgg16-397923af.pth is not in ~/.cache")), capsys)
    assert (code, err) == (3, "error: vgg16-397923af.pth is not in ~/.cache\n")
