import signal


class HarnessError(Exception):
    """A problem the user can fix (bad path, unknown choice, missing weights).

    The CLI prints the message alone, without a traceback, and exits non-zero.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the run ends as KILLED, with one line, never a traceback."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
