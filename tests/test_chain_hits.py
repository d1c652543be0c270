"""A chain over memcached reads each object from the database once: after a read found it, the
next read of the same key, by identity or by alternate key, is memcached's (no database read),
whatever puts, deletes and moves of alternate values came before, through a chain or below it
(rows the cache never held, inserted in the database alone), and whichever of two processes'
chains reads.

A hypothesis state machine against a model of the database; the "database" is an in-process
store that counts its reads. It pins the class of bug where a key stays a miss for good (a dead
alternate pointer that fills never replaced made every read of its value a database read).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore
from stockpyle.testing.models import Foo

KEYS = st.integers(0, 3)
ALTS = st.tuples(st.integers(0, 2), st.integers(0, 1))


class Database(ProcessMemoryStore):
    """The last layer: every read is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def batch_get_entries(self, cls: type[Any], key_dicts: Sequence[Any]) -> list[Any]:
        self.reads += 1
        return super().batch_get_entries(cls, key_dicts)

    def get_entry(self, cls: type[Any], key_dict: Any) -> Any:
        return self.batch_get_entries(cls, [key_dict])[0]


def chain_hits_machine(server: str) -> type[RuleBasedStateMachine]:
    class ChainHits(RuleBasedStateMachine):
        """Puts, deletes, moves and inserts below the cache; reads checked against the
        model, and a found object's second read must not reach the database."""

        @initialize()
        def start(self) -> None:
            self.database = Database()
            self.cache = MemcacheStore(servers=[server], prefix=f"hits{uuid.uuid4().hex[:10]}")
            self.chain = ChainedStore([self.cache, self.database])
            # Another process: a chain of its own over the same memcached and database.
            other = MemcacheStore(servers=[server], prefix=self.cache.prefix)
            self.other = ChainedStore([other, self.database])
            self.rows: dict[int, tuple[int, int]] = {}  # key -> its alternate value
            self.version = 0
            self.used: set[int] = set()  # keys ever written: a raw insert takes a new one
            self.freed: list[tuple[int, int]] = []  # alternate values rows moved away from

        def teardown(self) -> None:
            if hasattr(self, "chain"):
                self.chain.release()
                self.other.release()

        def _free(self, key: int, alt: tuple[int, int]) -> bool:
            """Whether no other row holds ``alt`` (alternate values are unique)."""
            return all(a != alt for k, a in self.rows.items() if k != key)

        def _obj(self, key: int, alt: tuple[int, int]) -> Foo:
            self.version += 1
            return Foo(key, alt[0], alt[1], name=f"v{self.version}")

        @rule(key=KEYS, alt=ALTS)
        def put(self, key: int, alt: tuple[int, int]) -> None:
            """A put through the chain (a new row, an update, or a move of its alternate
            value)."""
            if not self._free(key, alt):
                return  # (a step that does nothing: assume() would discard the whole run)
            self.chain.put(self._obj(key, alt))
            if self.rows.get(key, alt) != alt:
                self.freed.append(self.rows[key])
            self.rows[key] = alt
            self.used.add(key)

        @rule(key=KEYS)
        def delete(self, key: int) -> None:
            if key not in self.rows:
                return
            self.chain.delete(Foo(key, *self.rows.pop(key)))

        @rule(alt=ALTS)
        def insert_below(self, alt: tuple[int, int]) -> None:
            """A row inserted in the database alone (raw SQL): a key no cache ever held."""
            if not self._free(-1, alt):
                return
            key = 100 + len(self.used)
            self.database.put(self._obj(key, alt))
            self.rows[key] = alt
            self.used.add(key)

        @rule(i=st.integers(0, 3))
        def insert_below_at_a_freed_value(self, i: int) -> None:
            """:meth:`insert_below` with an alternate value a put moved a row away from."""
            if self.freed:
                self.insert_below(self.freed[i % len(self.freed)])

        def _read_twice(self, key_dict: dict[str, Any], expected: int | None, swap: bool) -> None:
            """Read ``key_dict`` through one chain, then (if found) through the other."""
            first, second = (self.other, self.chain) if swap else (self.chain, self.other)
            found = first.get(Foo, key_dict)
            assert (found and found.key) == expected, (key_dict, found, expected)
            if found is None:
                return  # misses are not cached: the next read asks the database again
            before = self.database.reads
            again = second.get(Foo, key_dict)
            assert again is not None and again.key == expected
            assert self.database.reads == before, f"{key_dict} missed memcached again"

        @rule(key=st.one_of(KEYS, st.integers(100, 110)), swap=st.booleans())
        def read_by_identity(self, key: int, swap: bool) -> None:
            self._read_twice({"key": key}, key if key in self.rows else None, swap)

        @rule(alt=ALTS, swap=st.booleans())
        def read_by_alternate(self, alt: tuple[int, int], swap: bool) -> None:
            holder = next((k for k, a in self.rows.items() if a == alt), None)
            self._read_twice({"zap": alt[0], "bar": alt[1]}, holder, swap)

    return ChainHits


@pytest.mark.memcached
def test_a_found_object_is_read_from_the_database_once(memcached_server: str) -> None:
    """The state machine above, with a fixed budget (100 runs of up to 40 steps)."""
    machine = chain_hits_machine(memcached_server)
    machine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
    machine.TestCase().runTest()
