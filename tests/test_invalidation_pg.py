"""PostgresChannel against a real PostgreSQL: real processes evict each other's memory layers, a
killed listener bypasses its layers until it is back, sessions publish exactly what they
commit, and messages are batched under the NOTIFY payload limit."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from helpers_fork import in_child
from helpers_invalidation import worker
from sqlalchemy import orm

from stockpyle.ext.sqlalchemy import StockpyleSessionExtension
from stockpyle.invalidation import MAX_PAYLOAD, PostgresChannel, keys_of
from stockpyle.stores import ChainedStore, ProcessMemoryStore, SqlAlchemyStore
from stockpyle.testing.sqlmodels import SqlFoo, SqlUser, clear_tables

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_url(postgres_url: str) -> Iterator[str]:
    """The PostgreSQL URL with a schema of its own for this module's run, dropped afterwards:
    the tables here are written by several processes, and no other test run (of this or
    another checkout, on the same server) may touch them meanwhile."""
    schema = "stockpyle_test_inv_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="module")
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    """An engine on this module's schema, with the test tables."""
    from stockpyle.testing.sqlmodels import SqlBase

    engine = sa.create_engine(pg_url)
    SqlBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def channel_name() -> str:
    """A channel of its own per test, so that concurrent test runs never hear each other."""
    return "stockpyle_test_" + uuid.uuid4().hex[:10]


@pytest.fixture
def clean(pg_engine: sa.Engine) -> sa.Engine:
    """The PostgreSQL engine over empty test tables."""
    clear_tables(pg_engine)
    return pg_engine


class Recorder:
    """Collects every raw message a listening channel hears (a second 'process')."""

    def __init__(self, url: str, name: str) -> None:
        self.channel = PostgresChannel(url, channel=name, skip_own=False)
        self.heard: list[str] = []
        original = self.channel.received

        def received(payloads: Any) -> None:
            payloads = list(payloads)
            self.heard.extend(payloads)
            original(payloads)

        self.channel.received = received  # type: ignore[method-assign]

    def heard_keys(self) -> list[str]:
        from stockpyle.invalidation._messages import unpack

        return [k for m in self.heard for k in unpack(m)[1] or ["<all>"]]

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.heard) < count and time.monotonic() < deadline:
            time.sleep(0.002)
        return len(self.heard) >= count


@pytest.fixture
def recorder(pg_url: str, channel_name: str) -> Iterator[Recorder]:
    """A listening channel that records what it hears."""
    rec = Recorder(pg_url, channel_name)
    rec.channel.start()
    assert rec.channel.wait_listening(30)
    yield rec
    rec.channel.stop()


def _hears(channel: PostgresChannel, messages: int, timeout: float = 20.0) -> bool:
    """Wait until ``channel`` has received ``messages`` messages in all."""
    deadline = time.monotonic() + timeout
    while channel.stats["received_messages"] < messages and time.monotonic() < deadline:
        time.sleep(0.001)
    return channel.stats["received_messages"] >= messages


def _terminate(pg_url: str, pid: int) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    finally:
        engine.dispose()


def _listen_after_an_old_write(
    here: PostgresChannel, there: PostgresChannel, other: ChainedStore
) -> None:
    """Start both channels; ``other`` (on ``there``) writes Foo 1 "old"; ``here`` hears it."""
    here.start()
    there.start()
    assert here.wait_listening(30) and there.wait_listening(30)
    other.put(SqlFoo(key=1, zap=1, bar=1, name="old"))
    assert _hears(here, 1)


# -- real processes -------------------------------------------------------------------------------


def test_four_processes_never_serve_an_old_value_from_memory(pg_url: str, clean: sa.Engine) -> None:
    """With 4 processes, each with [ProcessMemoryStore, SqlAlchemyStore] on its own channel,
    after any process's put or delete returns, every other process stops serving the old value
    from memory (it reads through its chain until it sees the new one); the measured delay is
    reported. Before each write, every process holds the old value in memory."""
    ctx = multiprocessing.get_context("spawn")
    pipes = []
    procs = []
    for _ in range(4):
        here, there = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(pg_url, there), daemon=True)
        proc.start()
        pipes.append(here)
        procs.append(proc)
    delays: list[float] = []
    try:
        for pipe in pipes:
            assert pipe.poll(60) and pipe.recv() == ("ready", True)
        names: dict[int, str | None] = {}
        for round_ in range(40):
            key = 1 + round_ % 3
            writer = round_ % 4
            if key in names and names[key] is not None:
                for pipe in pipes:  # every process holds the current value in memory
                    pipe.send(("read", key))
                for pipe in pipes:
                    assert pipe.recv() == (names[key], True)
            if round_ % 5 == 4:
                pipes[writer].send(("delete", key))
                names[key] = None
            else:
                names[key] = f"v{round_}"
                pipes[writer].send(("put", key, names[key]))
            written = pipes[writer].recv()
            others = [p for i, p in enumerate(pipes) if i != writer]
            for pipe in others:
                pipe.send(("await", key, names[key], 20.0))
            for pipe in others:
                seen = pipe.recv()
                if isinstance(seen, str):
                    pipes[writer].send(("stats",))
                    pytest.fail(f"round {round_}: {seen}; writer: {pipes[writer].recv()}")
                delays.append(max(0.0, seen - written))
    finally:
        for pipe in pipes:
            try:
                pipe.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()
    delays.sort()
    print(
        f"\nwrite-to-fresh-read delay over {len(delays)} observations:"
        f" p50 {statistics.median(delays) * 1000:.1f} ms,"
        f" p99 {delays[int(len(delays) * 0.99) - 1] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms"
    )


# -- a killed listener ----------------------------------------------------------------------------


def test_killed_listener_flushes_and_bypasses_until_it_listens_again(
    pg_url: str, clean: sa.Engine, channel_name: str
) -> None:
    """pg_terminate_backend on the listener's connection flushes its guarded layer and bypasses
    it (reads go to the database, no fill) while it is down: a write another process makes in
    that window (its message is lost) is never hidden by an old copy. Reconnection is held
    until the test says so; afterwards the layer is used again."""
    held = threading.Event()
    waiting = threading.Event()
    attempts: list[int] = []

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 0.0

    def sleep(seconds: float) -> None:  # the listener waits here before reconnecting
        waiting.set()
        assert held.wait(30)

    here = PostgresChannel(pg_url, channel=channel_name, backoff=backoff, sleep=sleep)
    there = PostgresChannel(pg_url, channel=channel_name)
    database = SqlAlchemyStore(uri=pg_url)
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, database], invalidation=here)
    other = ChainedStore([ProcessMemoryStore(), database], invalidation=there)
    try:
        _listen_after_an_old_write(here, there, other)
        assert chain.get(SqlFoo, {"key": 1}).name == "old"
        assert memory.get(SqlFoo, {"key": 1}) is not None

        pid = here.listener_pid
        assert pid is not None
        _terminate(pg_url, pid)
        assert waiting.wait(30)  # the listener saw the drop and is held before reconnecting
        assert not here.listening
        assert memory.suspended and len(memory) == 0  # flushed

        other.put(SqlFoo(key=1, zap=1, bar=1, name="new"))  # its message is lost for `here`
        assert chain.get(SqlFoo, {"key": 1}).name == "new"  # no stale read in the window
        assert len(memory) == 0  # and no fill while down
        assert here.stats["disconnects"] == 1

        held.set()
        assert here.wait_listening(30)
        assert here.listener_pid not in (None, pid)
        assert attempts == [0]
        assert chain.get(SqlFoo, {"key": 1}).name == "new"
        assert memory.get(SqlFoo, {"key": 1}) is not None  # used again
        other.put(SqlFoo(key=1, zap=1, bar=1, name="newer"))
        assert _hears(here, 2)
        assert memory.get(SqlFoo, {"key": 1}) is None
        assert chain.get(SqlFoo, {"key": 1}).name == "newer"
    finally:
        held.set()
        here.stop()
        there.stop()
        database.release()


# -- a forked child ------------------------------------------------------------------------------

WAIT = 30  # seconds: a bound on waiting for another process, never a duration under test


def test_a_forked_child_flushes_and_listens_on_its_own(
    pg_url: str, clean: sa.Engine, channel_name: str
) -> None:
    """A process forked after its channel started (a pre-forking server) inherits the memory
    layer's contents but no listener thread. The child starts with that layer flushed,
    listens on a connection of its own, and hears a write made after the fork (before this,
    it kept serving the inherited copy for good). The parent's connections are untouched:
    same listener and publisher backends after the child exits, still listening."""
    here = PostgresChannel(pg_url, channel=channel_name).start()
    there = PostgresChannel(pg_url, channel=channel_name)
    memory = ProcessMemoryStore()
    database = SqlAlchemyStore(engine=clean)
    chain = ChainedStore([memory, database], invalidation=here)
    other = ChainedStore([ProcessMemoryStore(), database], invalidation=there)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        _listen_after_an_old_write(here, there, other)
        assert chain.get(SqlFoo, {"key": 1}).name == "old"
        assert memory.get(SqlFoo, {"key": 1}) is not None  # inherited by the child
        here.publish(["a warm-up: the publisher connection exists"])
        listener, publisher = here.listener_pid, here._publisher
        assert publisher is not None
        publisher_pid = publisher.info.backend_pid

        def child() -> dict[str, Any]:
            clean.dispose(close=False)  # as SQLAlchemy asks of a forked process
            published = here.stats["published_messages"]  # the parent's are not the child's
            flushed = len(memory) == 0
            listening = here.wait_listening(WAIT)
            heard = here.stats["received_messages"]
            first = chain.get(SqlFoo, {"key": 1}).name
            os.write(ready_w, b"x")
            assert os.read(go_r, 1) == b"x"  # the parent has written "new" since the fork
            assert _hears(here, heard + 1)
            return {
                "published": published,
                "flushed": flushed,
                "listening": listening,
                "own listener": here.listener_pid not in (None, listener),
                "first": first,
                "evicted": memory.get(SqlFoo, {"key": 1}) is None,
                "after": chain.get(SqlFoo, {"key": 1}).name,
            }

        writer = threading.Thread(
            target=lambda: (
                os.read(ready_r, 1),
                other.put(SqlFoo(key=1, zap=1, bar=1, name="new")),
                os.write(go_w, b"x"),
            )
        )
        writer.start()
        report = in_child(child)
        writer.join(WAIT)
        assert here.stats["published_messages"] >= 1
        assert report == {
            "published": 0,
            "flushed": True,
            "listening": True,
            "own listener": True,
            "first": "old",
            "evicted": True,
            "after": "new",
        }
        assert here.listening and here.listener_pid == listener
        assert here._publisher is publisher and not publisher.closed
        assert here.publish(["after the child"]) and here._publisher is publisher
        assert publisher.info.backend_pid == publisher_pid
    finally:
        for fd in (go_r, go_w, ready_r, ready_w):
            os.close(fd)
        here.stop()
        there.stop()
        database.release()


def test_a_stopped_channel_stays_stopped_in_a_forked_child(pg_url: str, channel_name: str) -> None:
    """A channel that was stopped (or never started) before the fork starts nothing in the
    child: its guarded stores stay suspended there, as in the parent."""
    channel = PostgresChannel(pg_url, channel=channel_name).start()
    memory = ProcessMemoryStore()
    channel.guard(memory)
    assert channel.wait_listening(WAIT)
    channel.stop()

    def child() -> dict[str, Any]:  # (a restart would have set the thread in the fork)
        return {"thread": channel._thread is not None, "suspended": memory.suspended}

    assert in_child(child) == {"thread": False, "suspended": True}


def _park_listener(channel: PostgresChannel) -> tuple[threading.Event, threading.Event]:
    """Park ``channel``'s listener just before it next reads its connection: returns (parked,
    go). Messages sent meanwhile wait in its socket, as they do while the process is paused."""
    parked, go = threading.Event(), threading.Event()
    conn = channel._listener
    assert conn is not None
    real = conn.notifies

    def notifies(**kwargs: Any) -> Any:
        if not go.is_set():
            parked.set()
            assert go.wait(30)
        return real(**kwargs)

    conn.notifies = notifies  # type: ignore[method-assign]
    return parked, go


@pytest.mark.parametrize("threshold", [0.0, 3600.0])
def test_long_collector_pause_holds_memory_until_the_listener_drained(
    pg_url: str, clean: sa.Engine, channel_name: str, threshold: float
) -> None:
    """A message that waits in the listener's socket while the process collects garbage: with
    the pause at or above pause_threshold (0: injected), reads through the chain's keyword
    getter go below the memory layer from the collection on, and memory serves again only
    after the listener delivered the message. Below the threshold (3600 s) nothing is held,
    and memory serves the old copy until the listener runs: that is the window the fence
    closes."""
    import gc

    import stockpyle

    here = PostgresChannel(
        pg_url, channel=channel_name, poll_interval=0.05, pause_threshold=threshold
    )
    there = PostgresChannel(pg_url, channel=channel_name)
    database = SqlAlchemyStore(uri=pg_url)
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, database], invalidation=here)
    other = ChainedStore([ProcessMemoryStore(), database], invalidation=there)
    foos = stockpyle.Repo(SqlFoo, chain)
    go = threading.Event()
    try:
        _listen_after_an_old_write(here, there, other)
        assert foos.get(key=1).name == "old"  # type: ignore[union-attr]
        assert memory.get(SqlFoo, {"key": 1}) is not None

        parked, go = _park_listener(here)
        assert parked.wait(30)  # the listener is about to read its socket, and waits
        other.put(SqlFoo(key=1, zap=1, bar=1, name="new"))  # its message waits in the socket
        assert foos.get(key=1).name == "old"  # type: ignore[union-attr]  # the window

        gc.collect()  # a pause of the whole process (a full collection)
        below = database.stats().hits
        if threshold:
            assert not here.pauses.held and here.stats["long_pauses"] == 0
            assert foos.get(key=1).name == "old"  # type: ignore[union-attr]
            assert database.stats().hits == below
            go.set()
            assert _hears(here, 2)
            assert foos.get(key=1).name == "new"  # type: ignore[union-attr]
            return
        assert here.pauses.held and here.stats["long_pauses"] == 1
        assert chain.suspect_keys(0) == frozenset()  # a hold, no suspect key
        for _ in range(3):
            assert foos.get(key=1).name == "new"  # type: ignore[union-attr]  # from below
            assert chain.get(SqlFoo, {"zap": 1, "bar": 1}).name == "new"
        assert database.stats().hits == below + 6  # memory's copy was skipped every time
        assert here.stats["received_messages"] == 1

        go.set()  # the listener runs: it reads the waiting message, drains, releases
        deadline = time.monotonic() + 30
        while here.pauses.held and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not here.pauses.held
        assert here.stats["received_messages"] == 2 and here.stats["pause_releases"] >= 1
        assert foos.get(key=1).name == "new"  # type: ignore[union-attr]  # fills memory
        below = database.stats().hits
        assert foos.get(key=1).name == "new"  # type: ignore[union-attr]
        assert database.stats().hits == below  # memory serves again
    finally:
        go.set()
        here.stop()
        there.stop()
        database.release()
    assert not any(getattr(cb, "__qualname__", "").startswith("PauseFence") for cb in gc.callbacks)


def test_failed_publish_is_sent_later(pg_url: str, channel_name: str, recorder: Recorder) -> None:
    """A publish that fails (server unreachable for the moment) is counted, kept, and sent with
    the next attempt: late, not lost."""
    channel = PostgresChannel(pg_url, channel=channel_name)
    good = channel.conninfo
    channel.conninfo = "postgresql://127.0.0.1:1/nowhere"  # refuses connections
    try:
        assert not channel.publish(["lost?"])
        assert channel.stats["publish_failures"] == 1
        channel.conninfo = good
        assert channel.retry_backlog()
        assert recorder.wait_for(1)
        assert recorder.heard_keys() == ["lost?"]
    finally:
        channel.stop()


def test_publisher_reconnects_after_its_connection_is_killed(
    pg_url: str, channel_name: str, recorder: Recorder
) -> None:
    """A publishing connection killed between publishes is replaced transparently."""
    channel = PostgresChannel(pg_url, channel=channel_name)
    try:
        assert channel.publish(["a"])
        assert channel._publisher is not None
        _terminate(pg_url, channel._publisher.info.backend_pid)
        assert channel.publish(["b"])
        assert recorder.wait_for(2)
        assert recorder.heard_keys() == ["a", "b"]
    finally:
        channel.stop()


# -- batching -------------------------------------------------------------------------------------


def test_large_publish_is_split_under_the_payload_limit(
    pg_url: str, channel_name: str, recorder: Recorder
) -> None:
    """Keys worth far more than 8,000 bytes travel as several NOTIFYs, each under the limit,
    and arrive complete and in order."""
    keys = [f'app.models.Foo|key="{i:060d}"' for i in range(2000)]
    channel = PostgresChannel(pg_url, channel=channel_name)
    try:
        assert channel.publish(keys)
        count = channel.stats["published_messages"]
        assert count > 10
        assert recorder.wait_for(count)
        assert all(len(m.encode()) <= MAX_PAYLOAD for m in recorder.heard)
        assert recorder.heard_keys() == keys
    finally:
        channel.stop()


def test_concurrent_publishers_coalesce(pg_url: str, channel_name: str, recorder: Recorder) -> None:
    """Publishers that arrive while a send is in flight are sent together, in one round trip:
    with the first send held, 8 more publishes go out in a single batch."""
    channel = PostgresChannel(pg_url, channel=channel_name)
    entered, release = threading.Event(), threading.Event()
    sends: list[int] = []
    original = channel._send_now

    def held_send(messages: list[str]) -> None:
        sends.append(len(messages))
        if len(sends) == 1:
            entered.set()
            assert release.wait(10)
        original(messages)

    channel._send_now = held_send  # type: ignore[method-assign]
    try:
        first = threading.Thread(target=channel.publish, args=(["k0"],))
        first.start()
        assert entered.wait(10)
        others = [threading.Thread(target=channel.publish, args=([f"k{i}"],)) for i in range(1, 9)]
        for thread in others:
            thread.start()
        deadline = time.monotonic() + 10
        while len(channel._pending) < 8 and time.monotonic() < deadline:
            time.sleep(0.001)
        release.set()
        for thread in [first, *others]:
            thread.join(10)
        assert sends == [1, 8]
        assert recorder.wait_for(9)
        assert sorted(recorder.heard_keys()) == sorted(f"k{i}" for i in range(9))
    finally:
        release.set()
        channel.stop()


# -- the session extension ------------------------------------------------------------------------


@pytest.fixture
def session_channel(pg_url: str, channel_name: str) -> Iterator[PostgresChannel]:
    """The channel a session extension publishes on (not listening: publishing only)."""
    channel = PostgresChannel(pg_url, channel=channel_name)
    yield channel
    channel.stop()


def _maker(
    engine: sa.Engine, channel: PostgresChannel, store: Any = None
) -> tuple[orm.sessionmaker[orm.Session], Any]:
    cache = store if store is not None else ProcessMemoryStore()
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=cache, invalidation=channel).attach(maker)
    return maker, cache


def _count_notifies(engine: sa.Engine) -> Any:
    """Counts pg_notify statements the engine executes."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_notify" in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", before)


def test_rolled_back_session_publishes_nothing(
    clean: sa.Engine, session_channel: PostgresChannel, recorder: Recorder
) -> None:
    """A session that flushed changes (so pg_notify ran in its transaction) and then rolled
    back publishes nothing; a commit afterwards is heard, proving the listener was there."""
    maker, _ = _maker(clean, session_channel)
    seen, done = _count_notifies(clean)
    try:
        with maker() as session:
            session.add(SqlFoo(key=1, zap=1, bar=1, name="x"))
            session.flush()
            assert len(seen) == 1  # the flush sent its NOTIFY inside the transaction
            session.rollback()
        with maker() as session:
            session.add(SqlFoo(key=2, zap=2, bar=2, name="y"))
            session.commit()
    finally:
        done()
    # Notifications arrive in commit order: the rolled-back one would have come first.
    assert recorder.wait_for(1)
    assert recorder.heard_keys() == keys_of([SqlFoo(key=2, zap=2, bar=2)])


def test_committed_session_publishes_exactly_its_changes(
    clean: sa.Engine, session_channel: PostgresChannel, recorder: Recorder
) -> None:
    """A commit publishes, inside its transaction, the identity and alternate keys of what it
    inserted, updated and deleted, and the alternate values an update dropped: no more (a
    savepoint rolled back inside it publishes nothing)."""
    with orm.Session(clean) as session:
        session.add_all(
            [SqlFoo(key=1, zap=1, bar=1), SqlFoo(key=2, zap=2, bar=2), SqlFoo(key=3, zap=3, bar=3)]
        )
        session.add(SqlUser(id=1, email="a@example.org"))
        session.commit()
    maker, cache = _maker(clean, session_channel)
    with maker() as session:
        session.add(SqlFoo(key=4, zap=4, bar=4))
        foo2 = session.get(SqlFoo, 2)
        assert foo2 is not None
        foo2.zap = 20  # drops the alternate value (2, 2)
        session.delete(session.get(SqlFoo, 3))
        session.flush()
        nested = session.begin_nested()
        user = session.get(SqlUser, 1)
        assert user is not None
        user.email = "b@example.org"
        session.flush()
        nested.rollback()
        session.commit()
    expected = keys_of(
        [
            SqlFoo(key=4, zap=4, bar=4),
            SqlFoo(key=2, zap=20, bar=2),
            SqlFoo(key=2, zap=2, bar=2),
            SqlFoo(key=3, zap=3, bar=3),
        ]
    )
    # A message sent after the commit arrives after everything the commit sent.
    assert session_channel.publish(["<end>"])
    deadline = time.monotonic() + 20
    while "<end>" not in recorder.heard_keys() and time.monotonic() < deadline:
        time.sleep(0.002)
    heard = recorder.heard_keys()
    assert heard[-1] == "<end>"
    assert sorted(set(heard[:-1])) == sorted(expected)
    assert cache.get(SqlFoo, {"key": 4}) is not None  # the commit was applied to the cache


def test_session_on_the_channel_evicts_other_processes_memory(
    pg_url: str, clean: sa.Engine, session_channel: PostgresChannel, channel_name: str
) -> None:
    """A commit through a session evicts the object from another process's guarded memory."""
    there = PostgresChannel(pg_url, channel=channel_name).start()
    database = SqlAlchemyStore(uri=pg_url)
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, database], invalidation=there)
    try:
        assert there.wait_listening(30)
        maker, _ = _maker(clean, session_channel)
        with maker() as session:
            session.add(SqlFoo(key=1, zap=1, bar=1, name="old"))
            session.commit()
        assert chain.get(SqlFoo, {"key": 1}).name == "old"
        with maker() as session:
            foo = session.get(SqlFoo, 1)
            assert foo is not None
            foo.name = "new"
            session.commit()
        deadline = time.monotonic() + 20
        while chain.get(SqlFoo, {"key": 1}).name != "new" and time.monotonic() < deadline:
            time.sleep(0.001)
        assert chain.get(SqlFoo, {"key": 1}).name == "new"
    finally:
        there.stop()
        database.release()


def test_session_on_another_database_publishes_after_commit(
    tmp_path: Any, session_channel: PostgresChannel, recorder: Recorder
) -> None:
    """A session on a database the channel does not listen on (SQLite) cannot notify inside
    its transaction: its commit is published right after it commits, its rollback never."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
    clear_tables(engine)
    seen, done = _count_notifies(engine)
    try:
        maker, _ = _maker(engine, session_channel)
        with maker() as session:
            session.add(SqlFoo(key=1, zap=1, bar=1))
            session.flush()
            session.rollback()
        with maker() as session:
            session.add(SqlFoo(key=2, zap=2, bar=2))
            session.commit()
        assert seen == []  # nothing was sent through the session's own connection
        assert recorder.wait_for(1)
        assert recorder.heard_keys() == keys_of([SqlFoo(key=2, zap=2, bar=2)])
    finally:
        done()
        engine.dispose()
