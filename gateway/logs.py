"""Structured logs: one JSON object per line on stderr (journald keeps them).

Request headers are never logged, so a client's ``Authorization`` never reaches the logs.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any, TextIO

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


class LogWriter(threading.Thread):
    """Formats and writes queued records, every record waiting at that moment in one write."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None], stream: TextIO,
                 formatter: logging.Formatter) -> None:
        super().__init__(name="log-writer", daemon=True)
        self._records = records
        self._stream = stream
        self._formatter = formatter

    def run(self) -> None:
        while True:
            batch = [self._records.get()]
            while True:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    break
            lines = [self._formatter.format(r) for r in batch if r is not None]
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # stderr gone: nothing sensible left to report to
            if None in batch:
                return

    def stop(self) -> None:
        """Writes what is queued, then ends the thread."""
        self._records.put(None)
        self.join()


def setup(level: str) -> tuple[logging.Logger, LogWriter]:
    """The gateway's logger, writing JSON lines to stderr from a thread of its own.

    The event loop only enqueues records: a slow or blocked stderr (journald under pressure)
    never stalls request handling, and the write system calls, batched, are off the loop.
    Stop the returned writer at exit to flush.
    """
    # The CLI owns its process: records need not look up thread and process names
    # (logging's own switches, process-wide; the JSON lines do not show them anyway).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    writer = LogWriter(records, sys.stderr, JsonFormatter())
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [_Enqueue(records)]
    logger.setLevel(level.upper())
    logger.propagate = False
    writer.start()
    return logger, writer


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Logs one event with its fields. Made by hand rather than with logger.log(): that
    looks up the caller's file and line by walking the stack, per request."""
    if logger.isEnabledFor(level):
        record = logger.makeRecord(logger.name, level, "", 0, name, (), None,
                                   extra={"fields": fields})
        logger.handle(record)
