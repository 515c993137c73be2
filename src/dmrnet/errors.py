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
