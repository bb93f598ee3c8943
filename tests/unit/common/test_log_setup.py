"""Daemon logging setup and the job/op/instance/node context logger."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.common.errors import CorralError, ErrorKind
from corral.common.log import ContextLogger, context_logger, parse_level, setup_logging


@pytest.fixture
def clean_root() -> Iterator[None]:
    """Undo setup_logging's changes to the root logger after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: logging.getLogger(n).level for n in ("asyncio", "httpcore", "httpx")}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    for n, lvl in noisy.items():
        logging.getLogger(n).setLevel(lvl)


def test_setup_logging_writes_formatted_lines_to_file(tmp_path: Path, clean_root: None) -> None:
    log_file = str(tmp_path / "logs" / "noded.log")
    setup_logging(log_file=log_file, level="info", name="noded")
    logging.getLogger("corral.test").info("hello %s", "world")
    logging.getLogger("corral.test").debug("not shown")
    with open(log_file) as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 1
    assert f" noded[{os.getpid()}] INFO corral.test: hello world" in lines[0]


def test_setup_logging_twice_does_not_duplicate(tmp_path: Path, clean_root: None) -> None:
    log_file = str(tmp_path / "noded.log")
    setup_logging(log_file=log_file, level=logging.DEBUG)
    setup_logging(log_file=log_file, level=logging.DEBUG)
    logging.getLogger("corral.test").debug("once")
    with open(log_file) as fh:
        assert fh.read().count("once") == 1
    # Third-party chatter stays quiet even when Corral logs at DEBUG.
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("asyncio").getEffectiveLevel() == logging.INFO


def test_setup_logging_reopens_rotated_file(tmp_path: Path, clean_root: None) -> None:
    log_file = str(tmp_path / "noded.log")
    setup_logging(log_file=log_file, level="info")
    logging.getLogger("corral.test").info("before")
    os.rename(log_file, log_file + ".1")  # logrotate
    logging.getLogger("corral.test").info("after")
    with open(log_file) as fh:
        assert "after" in fh.read()


def test_bad_level_and_unwritable_file(tmp_path: Path, clean_root: None) -> None:
    with pytest.raises(CorralError) as err:
        parse_level("loud")
    assert err.value.kind is ErrorKind.INVALID
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CorralError) as err:
        setup_logging(log_file=str(blocker / "x.log"))
    assert err.value.kind is ErrorKind.ENVIRONMENT


def test_context_logger_prefixes_and_sets_record_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corral.test")
    log = context_logger("corral.test", job_id=12, op="OP_INSTANCE_STARTUP", instance="vm1")
    log.info("starting on %s", "n1")
    nlog = log.bind(node="n1", attempt=2)
    nlog.warning("retrying")
    first, second = caplog.records
    assert first.getMessage() == "[job 12 OP_INSTANCE_STARTUP vm1] starting on n1"
    assert first.job_id == 12 and first.instance == "vm1"  # type: ignore[attr-defined]
    assert second.getMessage() == "[job 12 OP_INSTANCE_STARTUP vm1 node=n1 attempt=2] retrying"
    assert second.node == "n1"  # type: ignore[attr-defined]
    assert log.context == {"job_id": 12, "op": "OP_INSTANCE_STARTUP", "instance": "vm1"}


def test_context_logger_without_fields_has_no_prefix(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corral.test")
    log = context_logger("corral.test", job_id=None)
    assert isinstance(log, ContextLogger)
    log.info("plain")
    assert caplog.records[0].getMessage() == "plain"
