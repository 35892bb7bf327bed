"""Structured logs: one JSON object per line on stderr (journald keeps them).

Request headers are never logged, so a client's ``Authorization`` never reaches the logs.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

LOGGER = "gateway"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "fields", None)
        entry["event"] = record.getMessage()
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting happens there too."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def setup(level: str) -> tuple[logging.Logger, logging.handlers.QueueListener]:
    """The gateway's logger, writing JSON lines to stderr from a thread of its own.

    The event loop only enqueues records: a slow or blocked stderr (journald under pressure)
    never stalls request handling, and the write system call is off the loop. Stop the
    returned listener at exit to flush.
    """
    logger = logging.getLogger(LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    logger.handlers[:] = [_Enqueue(records)]
    logger.setLevel(level.upper())
    logger.propagate = False
    listener.start()
    return logger, listener


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Logs one event with its fields. Made by hand rather than with logger.log(): that
    looks up the caller's file and line by walking the stack, per request."""
    if logger.isEnabledFor(level):
        record = logger.makeRecord(logger.name, level, "", 0, name, (), None,
                                   extra={"fields": fields})
        logger.handle(record)
