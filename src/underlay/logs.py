"""Logging set-up: plain text or one JSON object per line; secrets never reach a log line.

Anything that looks like an underlay token or a bearer header is redacted by the formatter,
as a second line of defence behind code that never logs secrets in the first place.

Values come from clients (paths, user names), so the text formatter escapes control
characters in the message and every extra field: a CR/LF in a path cannot forge a second log
line, and NUL or terminal escape sequences never reach the file or the operator's terminal
raw. JSON lines are escaped by ``json`` already. :func:`escape_control` is shared with the CLI.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

_SECRET = re.compile(r"(ul_[A-Za-z0-9_-]{8})[A-Za-z0-9_-]+|(Bearer\s+)\S+")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control(text: str) -> str:
    r"""``text`` with every control character written as an escape (``\n``, ``\x1b``)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "…", text)


# uvicorn's copy of the message with terminal colours; the time stamp Ray's record factory
# adds to every record of a process that imports it (see compute/executors/ray_cluster.py)
_DROPPED = {"color_message", "_ray_timestamp_ns"}


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
        extras = " ".join(f"{k}={escape_control(str(v))}" for k, v in _extras(record).items())
        message = escape_control(record.getMessage())
        line = f"{record.levelname:<7} {record.name}: {message} {extras}".rstrip()
        if record.exc_info:  # a traceback's own line breaks stay; what it quotes is escaped
            trace = self.formatException(record.exc_info).split("\n")
            line += "\n" + "\n".join(escape_control(part) for part in trace)
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
    # httpx logs every request of the built-in agent's client at INFO (two lines a heartbeat
    # with the access log); the server's access log already records what matters
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
