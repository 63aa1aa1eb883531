"""The errors a user can fix: each is printed by run.py as one line (exit 2), never as a traceback.

Every module raises these from here (the old paths `onelora.peft.PeftError`, `onelora.models.ModelError`,
`onelora.data.errors.DatasetFormatError` re-export them). This module imports nothing, so the lowest layer (peft)
can use it. A new kind of user error subclasses `UserError` here.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatasetFormatError",
    "ModelError",
    "PeftError",
    "RunDirError",
    "UserError",
    "hydra_error_line",
    "user_errors",
]


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


def hydra_error_line(error: BaseException) -> str | None:
    """One line for a command line Hydra cannot compose (unknown option of a group, misspelt key, bad syntax), or
    None for anything else. Hydra's own message spans 5-40 lines (every option of the group, one per line)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if not isinstance(error, ConfigCompositionException | MissingConfigException | OverrideParseException):
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, MissingConfigException) and "Available options" in str(error):
        head = lines[0].split(": ", 1)[-1]  # "Could not find 'peft/onelr'"
        body = lines[1 : next((i for i, line in enumerate(lines) if line.startswith("Config search path")), None)]
        opts = [line for line in body if not line.startswith("Available options")]
        group = head.split("'")[1].rsplit("/", 1)[0] if "'" in head else "the group"
        return f"{head}; {group} options: {', '.join(opts)}"
    cause = error.__cause__
    detail = str(cause).splitlines()[0].strip() if cause is not None and str(cause).strip() else ""
    text = lines[0].rstrip(".") + (f" ({detail})" if detail else "")
    hint = next((line for line in lines[1:] if line.startswith("To append")), "")
    if hint:  # Hydra: "To append to your config use +key=value" -- the fix for a key the config lacks
        text += f"; check the spelling, or add a new key with {hint.rsplit(' ', 1)[-1]}"
    elif isinstance(error, OverrideParseException):
        text += "; see https://hydra.cc/docs/advanced/override_grammar/basic/"
    return text
