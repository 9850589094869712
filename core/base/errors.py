"""User-facing errors.

Anything a user can fix (a missing file, an unknown recipe field, a label outside the declared
set) raises :class:`OmnituneError`. The CLI prints its message on one line and exits with status 2;
``--debug`` shows the traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class OmnituneError(Exception):
    """An error caused by the user's input, with a message that names the offending thing."""


class RecipeError(OmnituneError):
    """A recipe that does not validate: malformed YAML, unknown field, wrong type, bad combination."""


class DataError(OmnituneError):
    """Data that cannot be used: missing file or column, unknown label, empty after cleaning."""


class AssetError(OmnituneError):
    """An asset that is unknown or cannot be fetched or verified."""


class TrainingDiverged(OmnituneError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
