"""Exceptions that carry a user-facing message; the CLI prints them without a traceback."""


class DmrnetError(Exception):
    """Base class: something the user can fix (bad config, bad data, missing file)."""


class ConfigError(DmrnetError):
    """A config file or override is invalid; the message names the key."""


class DataError(DmrnetError):
    """A data file is missing, corrupt or inconsistent; the message names the file (and key)."""


class CheckpointError(DmrnetError):
    """A checkpoint or run directory cannot be loaded."""


class UnknownNameError(DmrnetError, LookupError):
    """A name (method, dataset, encoder, combination) is not registered or not valid."""


class NonFiniteError(DmrnetError):
    """Training produced a NaN or infinite loss or gradient; the message names epoch and step."""


class RunInterrupted(DmrnetError):
    """SIGINT or SIGTERM stopped a run; the message holds the command that resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
