"""The one exception type that means "the user asked for something impossible"."""


class UserError(Exception):
    """Bad input (flags, files, environment): reported as one line and exit status 2, no traceback."""
