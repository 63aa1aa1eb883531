"""The errors a user can fix: each is printed by run.py as one line (exit 2), never as a traceback.

Every module raises these from here (the old paths `onelora.train.ConfigError`, `onelora.peft.PeftError`,
`onelora.models.ModelError`, `onelora.data.errors.DatasetFormatError` re-export them). This module imports
nothing, so the lowest layer (peft) can use it. A new kind of user error subclasses `UserError` here.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DatasetFormatError", "ModelError", "PeftError", "RunDirError", "UserError", "user_errors"]


class UserError(ValueError):
    """A fault in the user's input (config, data, files) whose message names the value and the fix."""


class ConfigError(UserError):
    """A configuration the user can fix (one clear line)."""


class PeftError(UserError):
    """A user error in choosing or configuring a method (one clear line)."""


class ModelError(UserError):
    """A model that cannot be built as configured (one clear line)."""


class DatasetFormatError(UserError):
    """A dataset file is missing, malformed, or not in the expected on-disk format.

    The message always names the offending file and describes the layout the loader expected,
    so that a wrong ``data_root`` or a half-downloaded dataset is diagnosed from the message alone.
    """


class RunDirError(UserError):
    """The run directory cannot be used: not writable, or held by another live process."""


def user_errors() -> tuple[type[Exception], ...]:
    """Errors printed as one line by run.py (and recorded as a job's failure in a sweep), without a traceback."""
    return (UserError,)
