"""Errors that reach the user as one line.

Every problem a user can fix (a bad config value, a missing data folder, a damaged zoo file)
raises a subclass of :class:`WeightspaceError`. Entry points print ``error: <message>`` and
exit non-zero instead of a traceback, so the message must name the file or option at fault.
"""


class WeightspaceError(Exception):
    """Base class of errors meant for the user, printed as one line."""


class ConfigError(WeightspaceError, ValueError):
    """A config value is invalid; the message names the option."""


class DataError(WeightspaceError):
    """Task data is missing or malformed; the message names the path."""


class ZooError(WeightspaceError):
    """A zoo on disk is missing, incomplete, altered or incompatible; names the file."""
