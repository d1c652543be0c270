"""Stress and faults in CI (issue 15): threads and processes over real servers that misbehave.

3 worker processes x 3 threads, each process with its own
``ChainedStore([MemcacheStore(two private servers), SqlAlchemyStore(PostgreSQL)])``, run a
fixed budget of random gets, puts, deletes and batches while one memcached is paused
(SIGSTOP) and resumed, the other killed and restarted, and a *private* PostgreSQL cluster
(never the shared one) stopped and restarted. This reuses the coherence checker's machinery
(:mod:`stockpyle.testing.coherence`); stale reads are that checker's business, not this test's.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator

import pytest

from stockpyle.testing.coherence import (
    CheckerConfig,
    KillMemcached,
    PauseMemcached,
    Report,
    RestartDatabase,
    run_checker,
)
from stockpyle.testing.servers import PostgresCluster

pytestmark = [pytest.mark.memcached, pytest.mark.postgres]


def _servers_installed() -> bool:
    postgres = glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")
    return bool(postgres) and shutil.which("memcached") is not None


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster on a free port, removed afterwards."""
    if not _servers_installed():
        if os.environ.get("CI"):
            pytest.fail("memcached and PostgreSQL must be installed under CI (.ci/services.sh)")
        pytest.skip("memcached or the PostgreSQL server binaries are not installed")
    with PostgresCluster() as pg:
        yield pg


@pytest.fixture(scope="module")
def report(cluster: PostgresCluster) -> Report:
    """One stress run with every fault, shared by the assertions below."""
    result = run_checker(
        CheckerConfig(
            database_url=cluster.url,
            database_control=cluster,
            processes=3,
            threads=3,
            operations=6_000,
            seconds=60,  # a safety net only: the operation budget ends the run
            faults=(
                PauseMemcached(server=0, at=0.15, hold=1.5),
                KillMemcached(server=1, at=0.4, down=0.5),
                RestartDatabase(at=0.65, down=1.0),
            ),
            closing_races=0,
            pause_probability=0.005,
            quiesce_seconds=0.5,
            seed=15,
        )
    )
    print(result.summary())
    return result


def test_every_fault_was_injected(report: Report) -> None:
    """The budget was spent by 9 threads in 3 processes while a memcached was paused, the
    other killed and restarted, and the database stopped and restarted."""
    assert report.operations >= 6_000
    assert (report.processes, report.threads) == (3, 3)
    assert [f for f in report.faults if "not injected" in f] == []
    assert len(report.faults) == 3
    assert any("database stopped" in f for f in report.faults)


def test_only_store_errors_while_the_database_is_down(report: Report) -> None:
    """The application sees no error but a StoreError while the database is down (memcached
    faults are absorbed by the chain)."""
    assert report.unexpected_errors == 0, report.summary()


def test_no_put_or_delete_fails_from_concurrency_alone(report: Report) -> None:
    """Outside the database's downtime, every put and delete succeeds, however the threads
    and processes interleave."""
    assert report.failed_writes == 0, report.summary()


def test_no_acknowledged_write_is_lost(report: Report) -> None:
    """Across the faults, the database ends with the effect of a write that could have been
    the last one of its key (see :mod:`stockpyle.testing.coherence.report`)."""
    assert report.lost_writes == 0, report.summary()


def test_no_stray_warnings_from_concurrency(report: Report) -> None:
    """Outside the database's downtime, nothing warns or logs a warning: neither SQLAlchemy's
    "expected to delete 1 row(s); 0 were matched" nor psycopg's "error ignored terminating
    <psycopg.Pipeline>: pipeline aborted"."""
    assert report.warnings == 0, report.summary()
