"""UserError: a problem with the user's input or environment, said in one line."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line and exit code 2."""
    exit_code = 2
