"""The bot's database: one engine, short transactions, and one sentence when it is unavailable.

Works on SQLite (embedded, WAL) and PostgreSQL (several replicas). Methods of the stores built on it are
synchronous and short (one transaction each); async code calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bot.errors import UserFacingError


class StoreUnavailable(UserFacingError):
    """The database cannot be reached or stays locked."""


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; serialising our own writers avoids busy errors under load.
        self._sqlite_writer = threading.Lock() if self.engine.dialect.name == "sqlite" else None

    def migrate(self) -> None:
        from bot.migrations import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        lock = self._sqlite_writer
        if lock:
            lock.acquire()
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise StoreUnavailable(f"The bot's database is unavailable ({_short(exc)}); try again shortly.") from None
        finally:
            if lock:
                lock.release()

    def ping(self) -> bool:
        try:
            with self._tx() as session:
                session.execute(select(1))
            return True
        except StoreUnavailable:
            return False


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL is safe from corruption and skips an fsync per commit; a power cut may lose
            # the last commits, a crash of the bot loses nothing.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
