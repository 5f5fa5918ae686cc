"""One exception type for every user-facing failure.

The CLI turns a SublimError into a single line on stderr and exit code 2, so bad input never
produces a traceback wall or a half-written result. Raise it (or a subclass) for anything the
user can fix: bad config, missing file, wrong shape. Bugs stay ordinary exceptions.
"""


class SublimError(Exception):
    """An error the user can act on; printed as one line by the CLI."""


class ConfigError(SublimError, ValueError):
    """A configuration value is unknown, out of range or inconsistent."""


class DataError(SublimError):
    """A data file is missing, corrupt, or a data set is empty/malformed."""


class NumericalError(SublimError, FloatingPointError):
    """Training diverged (NaN/inf loss)."""
