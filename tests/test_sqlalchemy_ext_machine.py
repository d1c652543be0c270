"""The session extension against a model of the database: whatever sessions commit (inserts,
updates that move alternate values, alternate values exchanged in one commit, deletes,
rollbacks), every chain then reads what the database holds, and a found object's next read
reaches no database.

A hypothesis state machine over a real memcached and a SQLite file, then PostgreSQL. The hook
keeps one process's [memory, memcached] layers in step; its reads go through [memory,
memcached, SQL], another process's through [memcached, SQL] over the same memcached prefix.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from sqlalchemy import orm

from stockpyle.ext.sqlalchemy import StockpyleSessionExtension
from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore, SqlAlchemyStore
from stockpyle.testing.sqlmodels import SqlFoo, clear_tables

KEYS = st.integers(1, 4)
ALTS = st.tuples(st.integers(0, 2), st.integers(0, 1))


class Statements:
    """Counts the statements an engine runs."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1


def hook_machine(engine: sa.Engine, server: str) -> type[RuleBasedStateMachine]:
    statements = Statements(engine)

    class HookedCommits(RuleBasedStateMachine):
        """Commits through hooked sessions; reads checked against the model."""

        @initialize()
        def start(self) -> None:
            clear_tables(engine, [SqlFoo.__table__])  # type: ignore[list-item]
            prefix = f"hookm{uuid.uuid4().hex[:10]}"
            memory = ProcessMemoryStore()
            self.memcache = MemcacheStore(servers=[server], prefix=prefix)
            self.maker = orm.sessionmaker(engine)
            self.hooked = ChainedStore([memory, self.memcache])
            StockpyleSessionExtension(store=self.hooked).attach(self.maker)
            sql = SqlAlchemyStore(engine=engine)
            self.here = ChainedStore([memory, self.memcache, sql])
            other = MemcacheStore(servers=[server], prefix=prefix)
            self.there = ChainedStore([other, sql])
            self.rows: dict[int, tuple[tuple[int, int], str]] = {}  # key -> alternate, name
            self.version = 0

        def teardown(self) -> None:
            if hasattr(self, "here"):
                for chain in (self.hooked, self.here, self.there):
                    chain.release()

        def _name(self) -> str:
            self.version += 1
            return f"v{self.version}"

        def _free(self, key: int, alt: tuple[int, int]) -> bool:
            return all(a != alt for k, (a, _) in self.rows.items() if k != key)

        @rule(key=KEYS, alt=ALTS)
        def insert(self, key: int, alt: tuple[int, int]) -> None:
            if key in self.rows or not self._free(key, alt):
                return
            name = self._name()
            with self.maker() as session:
                session.add(SqlFoo(key=key, zap=alt[0], bar=alt[1], name=name))
                session.commit()
            self.rows[key] = (alt, name)

        @rule(key=KEYS, alt=ALTS, rollback=st.booleans())
        def update(self, key: int, alt: tuple[int, int], rollback: bool) -> None:
            """Rename a row and give it ``alt`` (a move when it differs), or roll that back."""
            if key not in self.rows or not self._free(key, alt):
                return
            name = self._name()
            with self.maker() as session:
                row = session.get(SqlFoo, key)
                assert row is not None
                row.zap, row.bar, row.name = alt[0], alt[1], name
                if rollback:
                    session.flush()
                    session.rollback()
                    return
                session.commit()
            self.rows[key] = (alt, name)

        @rule(one=KEYS, two=KEYS)
        def exchange(self, one: int, two: int) -> None:
            """Two rows exchange their alternate values in one commit."""
            if one == two or one not in self.rows or two not in self.rows:
                return
            (alt_one, _), (alt_two, _) = self.rows[one], self.rows[two]
            names = self._name(), self._name()
            with self.maker() as session:
                first, second = session.get(SqlFoo, one), session.get(SqlFoo, two)
                assert first is not None and second is not None
                first.zap, first.bar, first.name = alt_two[0], alt_two[1], names[0]
                second.zap, second.bar, second.name = alt_one[0], alt_one[1], names[1]
                session.commit()
            self.rows[one], self.rows[two] = (alt_two, names[0]), (alt_one, names[1])

        @rule(key=KEYS)
        def delete(self, key: int) -> None:
            if key not in self.rows:
                return
            with self.maker() as session:
                session.delete(session.get(SqlFoo, key))
                session.commit()
            del self.rows[key]

        def _read_twice(self, key_dict: dict[str, Any], expected: int | None, swap: bool) -> None:
            """Read through one process's chain, then (if found) the other's: the database's
            answer both times, and nothing asked of the database the second time."""
            first, second = (self.there, self.here) if swap else (self.here, self.there)
            found = first.get(SqlFoo, key_dict)
            assert (found and found.key) == expected, (key_dict, found, expected)
            if found is None or expected is None:
                return  # misses are not cached
            alt, name = self.rows[expected]
            assert ((found.zap, found.bar), found.name) == (alt, name), (found, alt, name)
            before = statements.count
            again = second.get(SqlFoo, key_dict)
            assert again is not None and (again.key, again.name) == (expected, name)
            assert statements.count == before, f"{key_dict} read the database again"

        @rule(key=KEYS, swap=st.booleans())
        def read_by_identity(self, key: int, swap: bool) -> None:
            self._read_twice({"key": key}, key if key in self.rows else None, swap)

        @rule(alt=ALTS, swap=st.booleans())
        def read_by_alternate(self, alt: tuple[int, int], swap: bool) -> None:
            holder = next((k for k, (a, _) in self.rows.items() if a == alt), None)
            self._read_twice({"zap": alt[0], "bar": alt[1]}, holder, swap)

    return HookedCommits


@pytest.mark.memcached
def test_commits_keep_every_chain_reading_the_database(
    file_or_pg_engine: sa.Engine, memcached_server: str
) -> None:
    """The state machine above, with a fixed budget (60 runs of up to 30 steps)."""
    machine = hook_machine(file_or_pg_engine, memcached_server)
    machine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
    machine.TestCase().runTest()
