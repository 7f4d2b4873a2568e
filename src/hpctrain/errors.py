"""Errors that reach the user as one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input or a request that cannot be met; the message says what and where."""
