class HarnessError(Exception):
    """A problem the user can fix (bad path, unknown choice, missing weights).

    The CLI prints the message alone, without a traceback, and exits non-zero.
    """
