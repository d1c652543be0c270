"""The coherence checker: real processes, real servers, faults, and a report (SPEC section 11).

Several worker processes (started with the *spawn* method, so each is a fresh interpreter like
a separate application server) each build their own store with a factory you name, over the
same memcached servers and the same database, and run random gets, puts, deletes and their
batch forms on a small shared key space of :class:`Item` rows, recording every operation.
Meanwhile the checker pauses a memcached (``SIGSTOP``) and resumes it, kills one and restarts
it on the same port, holds some readers between their database read and their fill, and, if
you let it, restarts the database. Then everything is left alone for a while, and the checker
reads every cache layer of every process directly, and every key through every chain, and
compares with the database. :class:`Report` says what it found::

    report = run_checker(CheckerConfig(database_url="postgresql+psycopg://..."))
    assert report.ok, report.summary()

From a shell: ``python -m stockpyle.testing.coherence --help``.
"""

from stockpyle.testing.coherence.chains import (
    DeafMemcacheStore,
    channel_chain,
    forgetful_chain,
    memcache_chain,
)
from stockpyle.testing.coherence.context import WorkerContext
from stockpyle.testing.coherence.faults import (
    DEFAULT_FAULTS,
    DatabaseControl,
    Fault,
    KillMemcached,
    PauseMemcached,
    RestartDatabase,
)
from stockpyle.testing.coherence.loader_chains import LoaderChain, loader_chain
from stockpyle.testing.coherence.model import CoherenceBase, Item, code_of
from stockpyle.testing.coherence.observe import LoadObserver, ObservedSqlAlchemyStore
from stockpyle.testing.coherence.report import Report
from stockpyle.testing.coherence.runner import CheckerConfig, run_checker
from stockpyle.testing.coherence.session_chains import session_chain
from stockpyle.testing.coherence.worker import OPERATIONS

__all__ = [
    "DEFAULT_FAULTS",
    "OPERATIONS",
    "CheckerConfig",
    "CoherenceBase",
    "DatabaseControl",
    "DeafMemcacheStore",
    "Fault",
    "Item",
    "KillMemcached",
    "LoadObserver",
    "LoaderChain",
    "ObservedSqlAlchemyStore",
    "PauseMemcached",
    "Report",
    "RestartDatabase",
    "WorkerContext",
    "channel_chain",
    "code_of",
    "forgetful_chain",
    "loader_chain",
    "memcache_chain",
    "run_checker",
    "session_chain",
]
