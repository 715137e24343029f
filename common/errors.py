"""Bad input said in one line: UserError stops the script (exit 2), warn goes on without the file or setting."""
import sys

from tqdm import tqdm


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line and exit code 2."""
    exit_code = 2


def warn(message):
    tqdm.write(f"warning: {message}", file=sys.stderr)  # tqdm.write keeps a running bar intact


def shown(name):
    """A user-given name or path as a message line shows it: as it is, or where it holds a newline or
    another unprintable character, quoted on one line (repr), so no part of it reads as a line of its own."""
    name = str(name)
    return name if name.isprintable() else repr(name)
