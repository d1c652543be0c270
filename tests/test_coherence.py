"""The coherence checker (issue 10 item 6, SPEC section 11), run by CI on a fixed budget.

One run of 20,000 operations by 4 worker processes, each with its own
``ChainedStore([MemcacheStore(two private servers), SqlAlchemyStore(PostgreSQL)])``, with a
memcached paused (SIGSTOP) and resumed, the other killed and restarted, readers held between
their database read and their fill, and closing races (a held reader in one process against a
put or delete in another). The assertions read the one report.

Also here: the checker reports a deliberately incoherent chain, the analysis's definitions
on hand-made records, and the command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from stockpyle.testing.coherence import CheckerConfig, CoherenceBase, Report, run_checker
from stockpyle.testing.coherence.report import analyse

pytestmark = [pytest.mark.memcached, pytest.mark.postgres]

#: The CI budget: issue 10 asks for at least 20,000 operations across 4 processes.
OPERATIONS = 20_000
PROCESSES = 4
#: The longest a read may return a version that a write acknowledged before the read began
#: had replaced, outside the faults' windows: twice the invalidation channel's documented
#: p99 (at most 37 ms in 30,000-operation runs on the CI machine). A net, not a proof: the
#: two bugs that made it 0.15-0.37 s in such runs (a follower taking an older load's result,
#: a bulk statement's row left cached) did not always show in these shorter runs; tests that
#: force their interleavings pin them (test_invalidation.py, test_sqlalchemy_ext.py).
STALE_WINDOW = 0.1


@pytest.fixture(scope="module")
def report(pg_url: str) -> Iterator[Report]:
    """One checker run on the CI budget, shared by the assertions below."""
    result = run_checker(
        CheckerConfig(
            database_url=pg_url,
            processes=PROCESSES,
            operations=OPERATIONS,
            seconds=150,  # a safety net only: the operation budget ends the run
            seed=10,
        )
    )
    print(result.summary())  # shown with -rA or on failure: the figures the lead asked for
    yield result


def test_budget_and_faults_were_applied(report: Report) -> None:
    """The run did its 20,000 operations of every kind and injected every fault: a pause,
    a kill and restart, held readers, and the closing races."""
    assert report.operations >= OPERATIONS
    assert set(report.operation_counts) >= {
        "get", "get_code", "batch_get", "put", "batch_put", "delete", "batch_delete", "evict"
    }  # fmt: skip
    assert [f for f in report.faults if "not injected" in f] == []
    assert any("paused" in f for f in report.faults)
    assert any("killed" in f for f in report.faults)
    assert report.held_readers > 0


def test_no_stale_entry_after_quiescence(report: Report) -> None:
    """Once every process stops writing, every cache layer holds, for every key, nothing or
    what the database holds; so does every read through every chain."""
    assert (report.stale_entries, report.stale_reads) == (0, 0), report.summary()


def test_no_deleted_object_comes_back(report: Report) -> None:
    """No cache layer, and no chain, answers with an object the database no longer holds."""
    assert report.resurrected == 0, report.summary()


def test_no_unexpected_application_error(report: Report) -> None:
    """The application sees no error at all: the database stays up, and memcached faults are
    absorbed by the chain (a failing cache layer is a miss, SPEC section 7)."""
    assert report.unexpected_errors == 0, report.summary()


def test_reads_fill_the_caches(report: Report) -> None:
    """After quiescence, a read through a chain leaves the key in its cache layers: the
    caches take part (a chain that never fills them is trivially coherent: the two tests
    above only mean something when this one passes)."""
    assert report.filled_keys > 0, report.summary()


def test_no_acknowledged_write_is_lost(report: Report) -> None:
    """The database ends with the effect of a write that could have been the last one."""
    assert report.lost_writes == 0, report.summary()


def test_stale_windows_outside_faults_are_short(report: Report) -> None:
    """Outside the faults' windows, no read returns a version an acknowledged write had
    replaced more than STALE_WINDOW before the read began (SPEC section 11: the window is
    bounded and measured)."""
    assert report.longest_superseded_outside_faults < STALE_WINDOW, report.summary()


def test_duplicate_loads_are_reported(report: Report) -> None:
    """Database reads are counted and overlapping reads of one key attributed (reported for
    the lead's benchmarks, not asserted: issue 10 asks for one load per lease window)."""
    assert report.loads > 0
    assert 0 <= report.duplicate_loads <= report.loads
    print(f"database loads {report.loads}, duplicate loads {report.duplicate_loads}")


def _two_workers_no_faults(pg_url: str, factory: str, **config: Any) -> CheckerConfig:
    """A short run of two workers without faults or closing races (unless ``config`` asks
    for some), cut by its time budget (``seconds``) long before its operation budget."""
    defaults: dict[str, Any] = {"quiesce_seconds": 0.5, "closing_races": 0}
    return CheckerConfig(
        database_url=pg_url,
        factory=factory,
        processes=2,
        operations=10**7,
        faults=(),
        pause_probability=0.0,
        seed=1,
        **{**defaults, **config},
    )


def test_checker_reports_an_incoherent_chain(pg_url: str) -> None:
    """A chain whose memcached layer ignores deletes must come out not ok, with the deleted
    objects reported as resurrected: the checker can fail. (The run is cut by its time
    budget, long before its operation budget.)"""
    result = run_checker(
        _two_workers_no_faults(
            pg_url, "stockpyle.testing.coherence.chains:forgetful_chain", seconds=3
        )
    )
    assert 0 < result.operations < 10**7
    assert not result.ok
    assert result.resurrected > 0
    assert result.examples["resurrected deletes"]


def _assert_coherent_half_run(
    pg_url: str, factory: str, seed: int, start: str = "spawn", **kwargs: Any
) -> Report:
    """A run of ``factory`` with the main run's faults and races on half its budget, which
    the checker finds coherent in every layer of every process, with no stale window outside
    the faults longer than STALE_WINDOW."""
    result = run_checker(
        CheckerConfig(
            database_url=pg_url,
            factory=factory,
            factory_kwargs=kwargs,
            processes=PROCESSES,
            operations=OPERATIONS // 2,
            seconds=150,  # a safety net only: the operation budget ends the run
            seed=seed,
            start=start,
        )
    )
    print(result.summary())
    assert result.operations >= OPERATIONS // 2
    assert any("paused" in f for f in result.faults) and any("killed" in f for f in result.faults)
    assert result.ok, result.summary()
    assert (result.stale_entries, result.stale_reads, result.resurrected) == (0, 0, 0)
    assert (result.lost_writes, result.unexpected_errors) == (0, 0)
    assert result.filled_keys > 0 and result.held_readers > 0
    assert result.longest_superseded_outside_faults < STALE_WINDOW, result.summary()
    return result


def test_memory_layers_kept_in_step_by_a_channel_stay_coherent(pg_url: str) -> None:
    """The same faults and races with a memory layer in every worker's chain, above
    memcached, kept in step by a PostgresChannel (``chains:channel_chain``): the checker
    finds nothing stale, resurrected or lost in any layer of any process (SPEC section 11:
    in-process layers hear about other processes' writes). Half the main run's budget."""
    _assert_coherent_half_run(pg_url, "stockpyle.testing.coherence.chains:channel_chain", 11)


def test_workers_forked_from_a_parent_that_used_the_chain_stay_coherent(pg_url: str) -> None:
    """As under a pre-forking server (gunicorn's ``preload_app``): the checker's own process
    builds the channel chain (memory, memcached, PostgreSQL), uses it, and forks the four
    workers while one of its threads still reads and writes through it; every worker runs on
    the chain it inherited (its channel listening again, its locks, flights and connections
    its own), with the same faults and races. Nothing stale, resurrected or lost in any layer
    of any process, the parent's included (audited after the workers released their copies).
    (With the channel's renewal in the child undone, this run reports dozens of stale
    entries and resurrected deletes; with no renewal at all, the workers hang.)"""
    result = _assert_coherent_half_run(
        pg_url, "stockpyle.testing.coherence.chains:channel_chain", 14, start="fork"
    )
    warm = 3 * 30 + 30 // 5 + 1  # ForkParent.warm() on the default 30 keys
    assert result.parent_operations > warm  # its busy thread ran too


def test_session_commits_keep_every_layer_coherent(pg_url: str) -> None:
    """The same faults and races with writes made by SQLAlchemy session commits, which the
    session extension applies to the caches (a memory layer on a PostgresChannel above
    memcached: ``session_chains:session_chain``), and reads through chains: nothing stale,
    resurrected or lost (SPEC sections 9 and 11). Half the main run's budget. (Before the
    extension invalidated what a commit deleted, this run reported about a hundred
    resurrected deletes: a plain delete let another process's fill in flight land.)"""
    _assert_coherent_half_run(
        pg_url, "stockpyle.testing.coherence.session_chains:session_chain", 12, memory=True
    )


def test_repo_loaders_over_caches_stay_coherent(pg_url: str) -> None:
    """The same faults and races with reads through a Repo whose loader reads the database,
    over a chain of cache layers only (a memory layer on a PostgresChannel above memcached),
    and writes to the database followed by an invalidation of the caches
    (``loader_chains:loader_chain``): nothing stale, resurrected or lost. (When loaders put
    what they loaded, this found stale entries and resurrected deletes in every run.)"""
    _assert_coherent_half_run(
        pg_url, "stockpyle.testing.coherence.loader_chains:loader_chain", 13, memory=True
    )


def test_checker_reports_memory_layers_nothing_keeps_in_step(pg_url: str) -> None:
    """The control for the run above: memory layers without a channel (or a lifetime) keep
    serving what other processes replaced, and the checker says so."""
    result = run_checker(
        _two_workers_no_faults(
            pg_url,
            "stockpyle.testing.coherence.chains:memcache_chain",
            seconds=3,
            factory_kwargs={"memory": True},
        )
    )
    assert not result.ok
    assert result.stale_entries + result.stale_reads > 0, result.summary()


@pytest.mark.parametrize("client", ["pymemcache", "python-memcached"])
def test_checker_reports_what_clients_without_leases_let_through(pg_url: str, client: str) -> None:
    """The control for the lease guarantees: the same chain over a pymemcache or
    python-memcached client (no leases: a fill is an ``add``). In a closing race a reader
    held between its database read and its fill, while another process deletes the key,
    then adds the deleted version: the checker reports it resurrected, in memcached (the
    store's page says so in its coherence table). With meta-memcache, the same races are
    clean (the runs above)."""
    result = run_checker(
        _two_workers_no_faults(
            pg_url,
            "stockpyle.testing.coherence.chains:memcache_chain",
            seconds=2,
            closing_races=3,  # step 1 is a delete against a held reader
            factory_kwargs={"client": client},
        )
    )
    assert not result.ok
    assert result.resurrected > 0, result.summary()
    (layer,) = result.bad_layers  # one layer: memcached
    assert "MemcacheStore" in layer, result.bad_layers


def test_an_unknown_client_kind_is_refused() -> None:
    """``memcache_chain``'s ``client`` names one of the two other libraries, or nothing."""
    from stockpyle.testing.coherence import WorkerContext
    from stockpyle.testing.coherence.chains import memcache_chain

    context = WorkerContext(0, ("127.0.0.1:1",), "sqlite://", "x")
    with pytest.raises(ValueError, match="client must be 'pymemcache' or 'python-memcached'"):
        memcache_chain(context, client="redis")


def test_a_hung_worker_fails_the_run_instead_of_hanging_it(pg_url: str) -> None:
    """Workers whose every read hangs: the checker gives up finish_grace_seconds after its
    budget (both injected short) and raises, and no worker process is left behind."""
    import multiprocessing

    with pytest.raises(TimeoutError, match="did not finish"):
        run_checker(
            _two_workers_no_faults(
                pg_url,
                "helpers_coherence:stuck_store",
                seconds=1,
                finish_grace_seconds=2,
                memcached=[],
                quiesce_seconds=0.1,
            )
        )
    assert not multiprocessing.active_children()


def test_a_second_checker_on_the_same_database_is_refused(pg_url: str) -> None:
    """Two checkers on one database would share its table, and each would report the other's
    writes as lost writes and stale entries. While one runs (its advisory lock held here), a
    second fails at once and leaves the first's table and rows alone; once the first is done,
    a checker runs."""
    from stockpyle.testing.coherence.runner import _LOCK_KEY

    engine = sa.create_engine(pg_url)
    config = _two_workers_no_faults(
        pg_url, "stockpyle.testing.coherence.chains:memcache_chain", seconds=0.5
    )
    try:
        CoherenceBase.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO stockpyle_coherence_item VALUES (7, 'x', 1, 0)"))
        with engine.connect() as holder:
            assert holder.scalar(sa.text(f"SELECT pg_try_advisory_lock({_LOCK_KEY})"))
            with pytest.raises(RuntimeError, match="another coherence checker is running"):
                run_checker(config)
            assert _rows(engine) == 1  # the first's row, untouched; its table kept
            holder.execute(sa.text(f"SELECT pg_advisory_unlock({_LOCK_KEY})"))
        assert run_checker(config).operations > 0
        assert not sa.inspect(engine).has_table("stockpyle_coherence_item")
    finally:
        CoherenceBase.metadata.drop_all(engine)
        engine.dispose()


def _children(pid: int) -> dict[int, str]:
    """The live (not zombie) child processes of ``pid``: their ids and command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:  # it ended meanwhile
                continue
            if int(ppid) == pid and state != "Z":
                found[int(entry.name)] = command
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _rows(engine: sa.Engine) -> int:
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SELECT count(*) FROM stockpyle_coherence_item")))
    except sa.exc.ProgrammingError:  # not created yet
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_no_worker_runs_on_after_the_checker_is_killed(
    pg_url: str, tmp_path: Path, signum: int
) -> None:
    """The command line killed while its workers write (by ``timeout`` or a service manager:
    SIGTERM; or SIGKILL). With SIGTERM it cleans up as on any exit: workers and its private
    memcached stopped, its table dropped, its temporary directory removed, exit status 143.
    With SIGKILL nothing of it runs: its workers, whose checker is gone, stop by themselves
    within a bound, and the kernel ends its memcached server (started under ``setpriv
    --pdeathsig``). Before, the workers ran on against the database for good, and spoiled
    every later run, and the server ran on for good."""
    tmp = tmp_path / "tmp"  # the checker's temporary directory goes here
    tmp.mkdir()
    errors = (tmp_path / "stderr").open("w")  # a file, not a pipe: nothing waits for a reader
    cli = subprocess.Popen(
        [sys.executable, "-m", "stockpyle.testing.coherence", "--database-url", pg_url,
         "--processes", "2", "--threads", "1", "--operations", "100000000", "--seconds", "600",
         "--no-faults", "--memcached", "1", "--keys", "8"],
        stdout=subprocess.DEVNULL,
        stderr=errors,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    engine = sa.create_engine(pg_url)
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120  # a bound on starting, never a duration under test
        while True:
            children.update(_children(cli.pid))
            workers = [p for p, command in children.items() if "spawn_main" in command]
            if len(workers) == 2 and _rows(engine) > 0:  # both run, and writes have landed
                break
            assert cli.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "the checker's workers never wrote"
            time.sleep(0.1)
        servers = [p for p, command in children.items() if "memcached" in command]
        assert len(servers) == 1 and len(children) == 4  # and multiprocessing's tracker
        cli.send_signal(signum)
        cli.wait(60)
        deadline = time.monotonic() + 30
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in children if _alive(p)] == []  # the server too
        if signum == signal.SIGTERM:
            assert cli.returncode == 128 + signal.SIGTERM
            assert not sa.inspect(engine).has_table("stockpyle_coherence_item")
            assert list(tmp.iterdir()) == []
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        errors.close()
        CoherenceBase.metadata.drop_all(engine)
        engine.dispose()


def _op(
    op: str, key: int, result: list[Any], start: float, end: float, kind: Any = None
) -> list[Any]:
    return [0, op, [key], "id", result, start, end, kind, "" if kind is None else "boom"]


def _worker(ops: list[list[Any]], entries: list[list[Any]] | None = None) -> dict[str, Any]:
    audit = {"layers": [], "entries": entries or [], "reads": []}
    return {"worker": 0, "ops": ops, "loads": [], "audit": audit}


def test_lost_write_definition() -> None:
    """A database state is a lost write unless some write that could have been last produced
    it: a write is superseded only by an acknowledged write that began after it ended;
    writes that raised may or may not have applied."""
    ops = [
        _op("put", 1, [101], 0.0, 1.0),
        _op("put", 1, [102], 0.5, 1.5),  # overlaps the first: either may be last
        _op("put", 2, [201], 0.0, 1.0),
        _op("put", 2, [202], 2.0, 3.0),  # strictly after: must be last
        _op("put", 3, [301], 0.0, 1.0),
        _op("delete", 3, [], 2.0, 3.0, kind="store"),  # failed: may or may not have applied
    ]
    good = analyse(Report(), [_worker(ops)], {1: 101, 2: 202}, [])
    assert good.lost_writes == 0
    assert analyse(Report(), [_worker(ops)], {1: 102, 2: 202, 3: 301}, []).lost_writes == 0
    lost = analyse(Report(), [_worker(ops)], {1: 101, 2: 201, 3: 301}, [])
    assert lost.lost_writes == 1
    assert "key 2" in lost.examples["lost writes"][0]


def test_errors_are_expected_only_while_the_database_is_down() -> None:
    """A StoreError overlapping a database-down window is expected; one outside it, or any
    other exception, is unexpected, and failed puts or deletes are counted as such."""
    ops = [
        _op("put", 1, [101], 1.0, 2.0, kind="store"),
        _op("put", 1, [102], 5.0, 6.0, kind="store"),
        _op("get", 1, [None], 1.0, 2.0, kind="unexpected"),
    ]
    result = analyse(Report(), [_worker(ops)], {}, [(1.5, 3.0)])
    assert (result.expected_errors, result.unexpected_errors, result.failed_writes) == (1, 2, 1)


def test_stale_and_resurrected_entries_are_told_apart() -> None:
    """A cache entry at another version than the database's is stale; one for a row the
    database no longer has is a resurrected delete; a shared layer is counted once."""
    entries = [
        [0, "MemcacheStore(a)", 1, "id", 100, True],
        [0, "MemcacheStore(a)", 1, "id", 100, True],  # the same shared entry, seen again
        [0, "MemcacheStore(a)", 2, "code", 7, True],
        [0, "MemcacheStore(a)", 3, "id", None, True],
    ]
    result = analyse(Report(), [_worker([], entries)], {1: 101, 3: 5}, [])
    assert (result.stale_entries, result.resurrected) == (1, 1)
    assert not result.ok


def test_superseded_reads_measure_the_stale_window() -> None:
    """A read of a version that an acknowledged later write had replaced before the read
    began is counted, with how long after that write returned; overlapping reads are not."""
    ops = [
        _op("put", 1, [101], 0.0, 1.0),
        _op("put", 1, [102], 2.0, 3.0),
        _op("get", 1, [101], 2.5, 2.6),  # the newer write had not returned: fine
        _op("get", 1, [101], 3.25, 3.3),  # 0.25 s after it returned: superseded
        _op("delete", 1, [], 4.0, 5.0),
        _op("get", 1, [102], 5.5, 5.6),  # deleted 0.5 s before: superseded
    ]
    result = analyse(Report(), [_worker(ops)], {}, [])
    assert result.superseded_reads == 2
    assert result.longest_superseded == pytest.approx(0.5)
    assert result.superseded_outside_faults == 2
    assert result.longest_superseded_outside_faults == pytest.approx(0.5)
    assert result.ok  # reported, not held against ok
    # A fault in force between the delete's return and the read that missed it: that window
    # is the fault's (a memcached that could not be told); the earlier one is ordinary.
    during = analyse(Report(), [_worker(ops)], {}, [], faulted=[(5.2, 5.3)])
    assert (during.superseded_reads, during.longest_superseded) == (2, pytest.approx(0.5))
    assert during.superseded_outside_faults == 1
    assert during.longest_superseded_outside_faults == pytest.approx(0.25)
    assert "outside faults 1, at most 0.250 s" in during.summary()


def test_load_observer_counts_each_read_once_and_holds_on_demand() -> None:
    """An observed store counts a read once per key however its read methods call each other,
    holds the next read of a thread when asked to, and only passes calls through when no
    recorder is installed (or it is disabled)."""
    from stockpyle.testing.coherence import CoherenceBase, Item, ObservedSqlAlchemyStore
    from stockpyle.testing.coherence.observe import Recorder, install

    store = ObservedSqlAlchemyStore(uri="sqlite://")
    CoherenceBase.metadata.create_all(store.engine)
    store.put(Item(id=1, code="c1", version=7, writer=0))
    recorder = Recorder()
    install(recorder)
    try:
        assert store.get(Item, {"code": "c1"}).version == 7  # get -> get_entry -> batch_get...
        store.batch_get(Item, [{"id": 1}, {"id": 2}])
        assert [label for label, _, _ in recorder.loads] == ["code=c1", "id=1", "id=2"]
        recorder.hold_next(0.001)
        store.get(Item, {"id": 1})
        assert recorder.pauses == 1
        recorder.enabled = False
        store.get(Item, {"id": 1})
        assert len(recorder.loads) == 4
    finally:
        install(None)
    store.get(Item, {"id": 1})
    assert len(recorder.loads) == 4


def test_command_line_help() -> None:
    """``python -m stockpyle.testing.coherence --help`` documents the budget options."""
    out = subprocess.run(
        [sys.executable, "-m", "stockpyle.testing.coherence", "--help"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "--operations" in out
    assert "--seconds" in out
    assert "--factory" in out
    assert "--start {spawn,fork}" in out


def test_an_unknown_start_method_is_refused_before_anything_runs() -> None:
    """``start`` is ``"spawn"`` or ``"fork"``; anything else fails at once (no server is
    started, no table touched: the URL here points nowhere)."""
    with pytest.raises(ValueError, match="start must be 'spawn' or 'fork', not 'fork2'"):
        run_checker(CheckerConfig(database_url="postgresql://nowhere.invalid/x", start="fork2"))
