"""Logging set-up: plain text or one JSON object per line; secrets never reach a log line.

Anything that looks like an underlay token or a bearer header is redacted by the formatter,
as a second line of defence behind code that never logs secrets in the first place.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

_SECRET = re.compile(r"(ul_[A-Za-z0-9_-]{8})[A-Za-z0-9_-]+|(Bearer\s+)\S+")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "…", text)


_DROPPED = {"color_message"}  # uvicorn's copy of the message with terminal colours


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: redact(v) if isinstance(v, str) else v
        for k, v in vars(record).items()
        if k not in _STANDARD and k not in _DROPPED
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            **_extras(record),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()} {extras}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def configure(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # ours logs paths without query strings
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
