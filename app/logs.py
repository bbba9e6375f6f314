"""One log line per event, with the event's fields (session_id, conversation_id, process...)."""

from __future__ import annotations

import logging
import sys

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class FieldsFormatter(logging.Formatter):
    """`time level logger message key=value ...`, the extra fields of the record appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
        return line


def configure_logging(level: str = "INFO") -> None:
    """Give the `arzani` loggers a handler once per process (gunicorn and rq keep their own)."""
    logger = logging.getLogger("arzani")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
