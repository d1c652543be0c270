"""An invalidation channel over PostgreSQL ``LISTEN``/``NOTIFY`` (psycopg 3).

The listener holds one *direct* connection per process (autocommit, ``LISTEN``); publishing uses
a second connection, or rides on the caller's own transaction (:meth:`PostgresChannel.notify_sql`)
so that a rollback publishes nothing. PostgreSQL delivers a notification only after its
transaction commits, to the sessions listening at that moment: nothing is replayed to a listener
that was disconnected, which is why guarded stores are suspended until it listens again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from stockpyle.exceptions import MissingDependencyError
from stockpyle.invalidation._channel import InvalidationChannel
from stockpyle.invalidation._messages import flush_message

try:
    import psycopg
    from psycopg import sql
except ModuleNotFoundError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError("psycopg", "postgres", store="PostgresChannel") from exc

__all__ = ["PostgresChannel"]

log = logging.getLogger("stockpyle.invalidation")

#: Messages kept for a retry after failed publishes (beyond: one flush-all message instead).
_BACKLOG = 1000

#: One round trip for any number of messages, in one transaction.
_NOTIFY_MANY = "SELECT pg_notify(%s, m) FROM unnest(%s::text[]) AS m"
#: One message (a put of one object): no array to build and send.
_NOTIFY_ONE = "SELECT pg_notify(%s, %s)"


def conninfo_of(target: Any) -> str:
    """A libpq connection string from a libpq string/URL, a SQLAlchemy URL (the ``+driver``
    part is dropped) or a SQLAlchemy ``Engine``."""
    url = getattr(target, "url", target)  # an Engine
    if hasattr(url, "render_as_string"):
        url = url.render_as_string(hide_password=False)
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if sep and scheme.startswith(("postgresql", "postgres")):
        return "postgresql://" + rest
    return text


class PostgresChannel(InvalidationChannel):
    """:class:`~stockpyle.invalidation.InvalidationChannel` over PostgreSQL ``LISTEN/NOTIFY``.

    ``PostgresChannel(dsn_or_engine, channel="stockpyle")``: the listener needs a *direct*
    connection (not through PgBouncer in transaction or statement mode, which does not keep a
    session's ``LISTEN``). ``backoff(attempt)`` gives the delay before each reconnection attempt
    and ``sleep(seconds)`` waits it (injectable; the default wakes up on :meth:`stop`).
    ``poll_interval`` is how often an idle listener checks whether it should stop (and how
    long at most an idle one keeps layers held after a long pause: see ``pause_threshold`` on
    :class:`~stockpyle.invalidation.InvalidationChannel`).
    """

    def __init__(
        self,
        dsn: Any,
        *,
        channel: str = "stockpyle",
        poll_interval: float = 0.2,
        connect_timeout: int = 5,
        max_keys: int = 10_000,
        skip_own: bool = True,
        backoff: Callable[[int], float] | None = None,
        sleep: Callable[[float], Any] | None = None,
        pause_threshold: float | None = 0.005,
    ) -> None:
        super().__init__(
            max_keys=max_keys,
            skip_own=skip_own,
            backoff=backoff,
            sleep=sleep,
            pause_threshold=pause_threshold,
        )
        self.conninfo = conninfo_of(dsn)
        self.channel = channel
        self.poll_interval = poll_interval
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": connect_timeout,
            # A listener must notice a dead peer: TCP keepalives (a killed backend is seen at
            # once, from the server's goodbye).
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        self._publisher: psycopg.Connection[Any] | None = None
        self._publish_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        #: The backend pid of the listener's connection (for ``pg_terminate_backend`` in tests
        #: and for operators), ``None`` while not connected.
        self.listener_pid: int | None = None
        # Group commit: writers that find a send in progress queue their messages for the next.
        self._pending: list[str] = []
        self._sending = False
        self._batch = 0
        self._sent = 0
        self._failed: dict[int, BaseException] = {}
        #: Messages whose sending failed: sent again with the next publish, or by the listener
        #: thread at its next poll, so a failed publish is late rather than lost.
        self._backlog: list[str] = []
        self._cond = threading.Condition()
        self._where: tuple[str | None, int | None, str | None] | None = None

    def describe(self) -> str:
        return f"PostgresChannel({self.channel!r})"

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, **self._connect_kwargs)

    # -- publishing -----------------------------------------------------------------------------

    def _send(self, messages: Sequence[str]) -> None:
        # Concurrent publishers coalesce: while one sends, the others queue their messages and
        # the next sender takes them all, in one round trip.
        with self._cond:
            self._pending.extend(messages)
            batch = self._batch + 1
            while self._sent < batch:
                if not self._sending:
                    self._sending = True
                    taken, self._pending = self._backlog + self._pending, []
                    self._backlog = []
                    self._batch += 1
                    number = self._batch
                    break
                self._cond.wait()
            else:
                error = self._failed.get(batch)
                if error is not None:
                    raise error
                return
        error = None
        try:
            self._send_now(taken)
        except Exception as exc:
            error = exc
        with self._cond:
            self._sending = False
            self._sent = number
            if error is not None:
                self._backlog = taken if len(taken) <= _BACKLOG else [flush_message(self.origin)]
                if len(self._failed) > 64:
                    self._failed.clear()
                self._failed[number] = error
            self._cond.notify_all()
        if error is not None:
            raise error

    def _send_now(self, messages: list[str]) -> None:
        if not messages:
            return
        with self._publish_lock:
            for attempt in (0, 1):  # one retry on a fresh connection (the old one may be dead)
                conn = self._publisher
                try:
                    if conn is None or conn.closed:
                        conn = self._publisher = self._connect()
                    if len(messages) == 1:
                        conn.execute(_NOTIFY_ONE, (self.channel, messages[0]))
                    else:
                        conn.execute(_NOTIFY_MANY, (self.channel, messages))
                    return
                except psycopg.Error:
                    self._drop_publisher()
                    if attempt:
                        raise

    def retry_backlog(self) -> bool:
        """Send the messages of failed publishes again; say whether none is left."""
        try:
            self._send(())
        except Exception as exc:
            log.warning("%s: publishing still fails (%s)", self.describe(), exc)
            return False
        log.info("%s: publishes that had failed were sent", self.describe())
        return True

    def _drop_publisher(self) -> None:
        conn, self._publisher = self._publisher, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:  # pragma: no cover - closing a broken connection
                pass

    def notify_sql(self, keys: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
        """``(statement, parameter sets)`` that publish ``keys`` from inside the caller's own
        transaction (``SELECT pg_notify(...)``, one parameter set per message): delivered only
        if that transaction commits. Messages carry this channel's origin, so the listener of
        this process skips them; the committer evicts its own process's stores after commit
        (:meth:`deliver`)."""
        return "SELECT pg_notify(%s, %s)", [(self.channel, m) for m in self.messages(keys)]

    def same_database(self, host: str | None, port: int | None, database: str | None) -> bool:
        """Whether a connection to ``host:port/database`` reaches the database this channel
        listens on (so a ``NOTIFY`` sent there is heard here)."""
        if self._where is None:
            info = psycopg.conninfo.conninfo_to_dict(self.conninfo)
            self._where = (
                str(info.get("host") or "localhost"),
                int(info.get("port") or 5432),
                str(info["dbname"]) if info.get("dbname") else None,
            )
        want_host, want_port, want_db = self._where
        return (
            (host or "localhost") == want_host
            and (port or 5432) == want_port
            and (database is None or want_db is None or database == want_db)
        )

    # -- listening ------------------------------------------------------------------------------

    def _listen(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                conn = self._connect()
            except psycopg.Error as exc:
                self.went_down(exc)
                self.sleep(self.backoff(attempt))
                attempt += 1
                continue
            self._listener = conn
            try:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.listener_pid = conn.info.backend_pid
                self.came_up()
                attempt = 0
                while not self._stopping.is_set():
                    owed = self.pauses.owed
                    if owed:  # after a long pause: deliver all that waited, then release
                        self._drain(conn)
                        self.pauses.drained(owed)
                        continue
                    # One packet at a time: every notification that arrived together is one
                    # batch, its keys coalesced into one eviction.
                    payloads = [
                        n.payload for n in conn.notifies(timeout=self.poll_interval, stop_after=1)
                    ]
                    if payloads:
                        self.received(payloads)
                    if self._backlog:
                        self.retry_backlog()
            except psycopg.Error as exc:
                self.went_down(exc)
            except Exception as exc:  # a bug must not leave stale layers in use
                log.exception("%s: listener failed", self.describe())
                self.went_down(exc)
            finally:
                self.listener_pid = None
                self._listener = None
                try:
                    conn.close()
                except psycopg.Error:  # pragma: no cover - closing a broken connection
                    pass
            if not self._stopping.is_set():
                self.sleep(self.backoff(attempt))
                attempt += 1
        self.went_down()

    def _drain(self, conn: psycopg.Connection[Any]) -> None:
        """Deliver every notification ``conn`` has received, without waiting for more."""
        while payloads := [n.payload for n in conn.notifies(timeout=0)]:
            self.received(payloads)

    def _close(self) -> None:
        with self._publish_lock:
            self._drop_publisher()

    def _reset_after_fork(self) -> None:
        super()._reset_after_fork()
        # The parent's: dropped, not closed (psycopg closes a connection only in the process
        # that opened it). Its unsent messages are its own to retry.
        self._publisher = self._listener = None
        self.listener_pid = None
        self._publish_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending, self._backlog, self._failed = [], [], {}
        self._sending = False
        self._batch = self._sent = 0
