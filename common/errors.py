"""Bad input said in one line: UserError stops the script (exit 2), warn goes on without the file or setting."""
import shlex
import sys

from tqdm import tqdm


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line and exit code 2."""
    exit_code = 2


def warn(message):
    tqdm.write(f"warning: {message}", file=sys.stderr)  # tqdm.write keeps a running bar intact


def unprintable(c):
    """A control character, or a byte that is not UTF-8 (os.fsdecode keeps it as a surrogate)."""
    return ord(c) < 32 or ord(c) == 127 or 0xDC80 <= ord(c) <= 0xDCFF


def shell_word(word):
    """`word` quoted for a POSIX shell, on one line whatever it holds: a word with an unprintable
    character (a newline would end the line) is written in bash's $'...' form, each such byte as \\xHH."""
    if not any(map(unprintable, word)):
        return shlex.quote(word)
    escaped = (f"\\x{ord(c) & 0xFF:02x}" if unprintable(c) else "\\" + c if c in "\\'" else c for c in word)
    return "$'" + "".join(escaped) + "'"
