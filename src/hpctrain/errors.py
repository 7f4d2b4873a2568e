"""Errors that reach the user as one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input or a request that cannot be met; the message says what and where."""


class TrainingFailed(Exception):
    """Training itself went wrong (a non-finite loss, a checkpoint that cannot be written); the message
    says where. Exit code 1."""


def one_of(names):
    """'a', 'b' or 'c' (for messages that list the choices)."""
    names = [str(n) for n in names]
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else "nothing"
