"""What reaches the screen: the dependencies' own console handlers are routed through the root's filtered console."""

from __future__ import annotations

import logging

import pytest

from onelora.run.logs import ConsoleFilter, quiet_dependencies


@pytest.fixture
def restore_loggers():
    names = ("huggingface_hub", "transformers", "lightning")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    root = list(logging.getLogger().handlers)
    yield
    logging.getLogger().handlers[:] = root
    for n, (handlers, propagate) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def test_hub_retries_and_transformers_warnings_reach_the_log_not_the_screen(restore_loggers) -> None:
    quiet_dependencies()
    for name in ("huggingface_hub", "transformers", "lightning"):
        logger = logging.getLogger(name)
        consoles = [h for h in logger.handlers if type(h) is logging.StreamHandler]
        assert consoles == [] and logger.propagate, name  # through the root: run.log whole, console filtered
    retry = logging.LogRecord(
        "huggingface_hub.utils._http", logging.WARNING, "", 0, "Retrying in 1s [Retry 1/5].", None, None
    )
    ours = logging.LogRecord("onelora", logging.INFO, "", 0, "epoch 1/2", None, None)
    error = logging.LogRecord("transformers.modeling_utils", logging.ERROR, "", 0, "broken", None, None)
    console = ConsoleFilter()
    assert not console.filter(retry) and console.filter(ours) and console.filter(error)


def test_a_script_without_hydras_logging_shows_errors_not_a_dependencys_warnings(restore_loggers, capsys) -> None:
    logging.getLogger().handlers[:] = []  # a script's process: no handler until quiet_dependencies()
    quiet_dependencies()
    log = logging.getLogger("transformers.modeling_utils")
    log.warning("BertForSequenceClassification LOAD REPORT: classifier.weight MISSING")
    log.error("broken checkpoint")
    err = capsys.readouterr().err
    assert "LOAD REPORT" not in err and "broken checkpoint" in err
