"""Logs: JSON in a cluster, readable lines in a terminal; and never a secret.

Every secret the bot holds is registered here and masked in every record's message, arguments and
exception text as the record is made (a LogRecord factory), so it is masked whatever code logged it and
whichever handler writes it: uvicorn, for one, installs handlers of its own on its loggers, which never
reach the root handler and its `SecretRedactor` filter.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    if value and len(value) >= 4:
        _SECRETS.add(value)
        _install_record_factory()


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "**********")
    return text


def mask_record(record: logging.LogRecord) -> None:
    """Mask every registered secret in a record's message, arguments, exception and stack text."""
    if not _SECRETS:
        return
    record.msg = redact(str(record.msg))
    if record.args:
        if isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        else:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class SecretRedactor(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


def _install_record_factory() -> None:
    """Mask at the source: every record, from every logger, whatever handlers it then goes to."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_masks_secrets", False):
        return

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        mask_record(record)
        return record

    make._masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(log_format: str = "auto", level: int = logging.INFO) -> None:
    use_json = log_format == "json" or (
        log_format == "auto" and (bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or not sys.stderr.isatty())
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SecretRedactor())
    handler.setFormatter(
        JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    _install_record_factory()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in (
        "httpx",
        "httpcore",
        "urllib3",
        "kubernetes",
        "apscheduler",
        "uvicorn.access",
        "slack_bolt",
        "slack_sdk",
        "aiohttp.access",
        "alembic",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
