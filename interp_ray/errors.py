"""Errors a user can fix. The CLI turns these into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input: a wrong name, a malformed file, a missing checkpoint. The message says what to fix."""


class UnknownNameError(UserError, KeyError):
    """A name that is not in a registry; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]
