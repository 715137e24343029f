"""Command-line plumbing shared by every script: one clear line on bad input, never a traceback."""
import sys


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line and exit code 2."""


def run_main(main):
    """Call main(); turn a UserError into `error: ...` on stderr and a non-zero exit."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
