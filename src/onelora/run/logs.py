"""What a run prints, and what only goes to its log file.

Hydra configures logging before a job starts (configs/hydra/default.yaml, `job_logging`): a console handler
and a file handler (`<run dir>/run.log`) on the root logger. Everything reaches the file; the console shows the
suite's own messages and real problems, not the dependencies' chatter (`ConsoleFilter`). `quiet_dependencies()`
then undoes what the dependencies do on import: Lightning puts its own console handler on the `lightning` logger
and also propagates to the root (every line twice), `warnings` print to stderr directly, transformers draws a
progress bar for loading a handful of tensors. This module imports nothing heavy: Hydra's dictConfig imports it.
"""

from __future__ import annotations

import logging
import os

SUITE_LOGGERS = ("onelora", "__main__", "run")


def _from_dependency(record: logging.LogRecord) -> bool:
    """A captured warning raised inside an installed package (its message starts with the file's path)."""
    message = str(record.msg)
    return "site-packages" in message.split(":", 1)[0] or "dist-packages" in message.split(":", 1)[0]


class ConsoleFilter(logging.Filter):
    """The console shows the suite's lines and anyone's errors; the dependencies' INFO and warnings go to the file.

    Set `ONELORA_VERBOSE=1` to see everything on the console too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("ONELORA_VERBOSE"):
            return True
        if record.name.split(".")[0] in SUITE_LOGGERS:
            return True
        if record.levelno >= logging.ERROR:
            return True
        if record.name == "py.warnings":  # warnings.warn, routed through logging by quiet_dependencies()
            return not _from_dependency(record)
        # a dependency's warnings ("install kernels for a faster ...") are for the log file; ours and the root's show
        return record.levelno >= logging.WARNING and record.name in ("root", "hydra")


def quiet_dependencies() -> None:
    """Route Lightning's and Python's warnings through the root logger's handlers (console filtered, file whole),
    and turn off the dependencies' progress bars. Idempotent; call once the job's logging is configured."""
    import lightning  # noqa: F401  # importing it adds the handler removed below
    import transformers

    # Lightning, the hub (its download retries: 10 lines a file when offline) and transformers put their own
    # console handlers on their loggers: through the root instead, their lines reach run.log and only errors the screen
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "pytorch_lightning",
        "huggingface_hub",
        "transformers",
    ):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    # Lightning advertises its cloud loggers on every Trainer; nobody needs that, not even in the file
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvert())
    root = logging.getLogger()
    if not root.handlers:  # a script, not a Hydra job: else logging's last resort prints every warning raw
        console = logging.StreamHandler()
        console.addFilter(ConsoleFilter())
        console.setFormatter(ConsoleFormatter())
        root.addHandler(console)
    logging.captureWarnings(True)
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class ConsoleFormatter(logging.Formatter):
    """INFO lines as they are; warnings and errors prefixed with their level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return f"{record.levelname.lower()} ({record.name}): {super().format(record)}"


class _NoAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in str(record.msg)
