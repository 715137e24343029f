"""Can this Python build the project's venv? If not, say what to install in one `error:` line.

The Makefile runs it with PYTHON before it creates the venv, so a too-old Python or one without
the venv module stops with that line instead of a pip or ensurepip traceback. Plain syntax (no
f-strings) on purpose: a Python 2 or 3.6 must be able to run it to print the message.
Usage: python tools/check_python.py [NAME]   (NAME: how the user called this Python, for messages)
"""
import sys

SUPPORTED = ((3, 10), (3, 13))  # oldest and newest Python that requirements.txt pins and CI tests


def has_venv():
    """venv and ensurepip importable, and ensurepip has its pip wheel (Debian/Ubuntu split these
    into python3.X-venv; without it, `python -m venv` fails after creating half a venv)."""
    try:
        import venv  # noqa: F401
        import ensurepip
        return bool(ensurepip.version())
    except Exception:
        return False


def problem(version, name, venv_ok):
    """The error line for a Python of `version` (major, minor) called `name`, or None if usable."""
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED
    wanted = "%d.%d-%d.%d" % (lo_major, lo_minor, hi_major, hi_minor)
    if tuple(version[:2]) < SUPPORTED[0]:
        return ("error: Python %d.%d is too old; this project needs %s (install python3.12, "
                "then: make test PYTHON=python3.12)" % (version[0], version[1], wanted))
    if not venv_ok:
        return ("error: %s has no venv module: install it (Debian/Ubuntu: sudo apt install "
                "python%d.%d-venv)" % (name, version[0], version[1]))
    return None


def main(argv):
    name = argv[1] if len(argv) > 1 else "python3"
    version = sys.version_info
    message = problem(version, name, has_venv())
    if message:
        print(message)
        return 1
    if tuple(version[:2]) > SUPPORTED[1]:
        print("warning: Python %d.%d is newer than the tested %d.%d; trying anyway"
              % (version[0], version[1], SUPPORTED[1][0], SUPPORTED[1][1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
