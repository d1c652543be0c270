"""SqlAlchemyStore against SQLAlchemy used directly, on SQLite (and PostgreSQL when given).

* ``batch_get`` of 1, 10, 100 and 1000 rows by primary key against a raw
  ``select(BenchRow).where(BenchRow.id.in_(ids))`` in a fresh session;
* ``batch_get(1000)`` against 1000 single ``store.get`` calls (the cost batching saves) and,
  for reference, 1000 ``session.get`` calls in one raw session (per object; the batch side
  makes ten batches per sample, so that both sides' samples last tens of milliseconds);
* ``batch_put`` of 1000 new rows against a raw session's ``add_all`` and ``commit``;
* ``batch_put`` of 1000 existing rows (an update of each) against the upsert a user would
  write by hand: one executemany ``INSERT ... ON CONFLICT (id) DO UPDATE`` of the same objects'
  columns, in one transaction; the same for rows with a time stamp and a UUID
  (``BenchStampedRow``: PostgreSQL writes those types as arrays too).

Every sample of the writes inserts rows never seen before (built untimed), so both sides do
the same INSERTs. The benchmark table is dropped when the cases finish.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from harness import Case, Context
from models import BenchBase, BenchRow, BenchStampedRow, make_rows, make_stamped_rows
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql, sqlite

from stockpyle.stores.sqlalchemy import SqlAlchemyStore

__all__ = ["SIZES", "cases"]

SIZES = (1, 10, 100, 1000)
PUT_SIZE = 1000
#: How many batch_get(1000) calls one sample of the batch side against single gets makes.
BATCH_REPEATS = 10


def _private_schema(ctx: Context, url: str) -> str:
    """``url`` (PostgreSQL) pointed at a schema of this run's own, dropped when it ends, so
    that the benchmark never touches anyone else's tables."""
    schema = f"stockpyle_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    ctx.cleanups.append(drop)
    private = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return private.render_as_string(hide_password=False)


def _backend_cases(ctx: Context, backend: str, url: str) -> list[Case]:
    if backend == "postgresql":
        url = _private_schema(ctx, url)
    engine = sa.create_engine(url)
    BenchBase.metadata.drop_all(engine)
    BenchBase.metadata.create_all(engine)

    def clean() -> None:
        BenchBase.metadata.drop_all(engine)
        engine.dispose()

    ctx.cleanups.append(clean)
    store = SqlAlchemyStore(engine=engine)
    rows = make_rows(max(SIZES))
    store.batch_put(rows)
    cases: list[Case] = []

    for size in SIZES:
        ids = [r.id for r in rows[:size]]
        reps = max(1, 100 // size)

        def store_get(ids: list[int] = ids, reps: int = reps) -> int:
            for _ in range(reps):
                store.batch_get(BenchRow, [{"id": i} for i in ids])
            return reps * len(ids)

        def raw_in(ids: list[int] = ids, reps: int = reps) -> int:
            for _ in range(reps):
                with orm.Session(engine) as session:
                    session.scalars(sa.select(BenchRow).where(BenchRow.id.in_(ids))).all()
            return reps * len(ids)

        def check(ids: list[int] = ids) -> None:
            found = store.batch_get(BenchRow, [{"id": i} for i in ids])
            assert [r.id if r is not None else None for r in found] == ids
            with orm.Session(engine) as session:
                stmt = sa.select(BenchRow).where(BenchRow.id.in_(ids))
                assert len(session.scalars(stmt).all()) == len(ids)

        cases.append(
            Case(
                f"sql {backend} batch_get({size})",
                f"sql-get-{backend}",
                size,
                {"stockpyle": store_get, "raw IN select": raw_in},
                rounds=ctx.rounds(40),
                check=check,
            )
        )

    ids = [r.id for r in rows]

    def store_batch() -> int:
        # BATCH_REPEATS batches per sample: both sides of a round then run for tens of
        # milliseconds. One batch alone (about 3 ms) right after the singles' 50 ms measures
        # mostly the switch back to it (see docs/benchmarks.md), not what a batch costs.
        for _ in range(BATCH_REPEATS):
            store.batch_get(BenchRow, [{"id": i} for i in ids])
        return BATCH_REPEATS * len(ids)

    def store_singles() -> int:
        get = store.get
        for i in ids:
            get(BenchRow, {"id": i})
        return len(ids)

    def raw_singles() -> int:
        with orm.Session(engine) as session:
            for i in ids:
                session.get(BenchRow, i)
        return len(ids)

    cases.append(
        Case(
            f"sql {backend} batch_get(1000) vs single gets",
            f"sql-singles-{backend}",
            len(ids),
            {
                "stockpyle": store_batch,
                "1000 single store.get": store_singles,
                "1000 raw session.get": raw_singles,
            },
            rounds=ctx.rounds(8),
            warmup=1,
        )
    )

    # -- writes of new rows ----------------------------------------------------------------------

    next_start = itertools.count(1_000_000, PUT_SIZE)
    pending: dict[str, list[Any]] = {}

    def fresh(label: str) -> None:
        pending[label] = make_rows(PUT_SIZE, start=next(next_start))

    def store_put() -> int:
        batch = pending.pop("stockpyle")
        store.batch_put(batch)
        return len(batch)

    def raw_put() -> int:
        batch = pending.pop("raw")
        with orm.Session(engine) as session:
            session.add_all(batch)
            session.commit()
        return len(batch)

    def check_put() -> None:
        fresh("stockpyle")
        fresh("raw")
        store_put()
        raw_put()
        with orm.Session(engine) as session:
            count = session.scalar(sa.select(sa.func.count()).select_from(BenchRow))
        assert count == len(rows) + 2 * PUT_SIZE, count

    cases.append(
        Case(
            f"sql {backend} batch_put({PUT_SIZE})",
            f"sql-put-{backend}",
            PUT_SIZE,
            {"stockpyle": store_put, "raw add_all+commit": raw_put},
            prepare={
                "stockpyle": lambda: fresh("stockpyle"),
                "raw add_all+commit": lambda: fresh("raw"),
            },
            rounds=ctx.rounds(20),
            check=check_put,
        )
    )

    # -- updates of existing rows --------------------------------------------------------------

    cases.append(_upsert_case(ctx, store, backend, BenchRow, make_rows, "rows"))
    # The same with a time stamp and a UUID (PostgreSQL writes those as arrays too).
    store.batch_put(make_stamped_rows(PUT_SIZE))
    cases.append(
        _upsert_case(ctx, store, backend, BenchStampedRow, make_stamped_rows, "stamped rows")
    )
    return cases


def _upsert_case(
    ctx: Context,
    store: SqlAlchemyStore,
    backend: str,
    cls: Any,
    make: Callable[[int], list[Any]],
    what: str,
) -> Case:
    """``batch_put`` of the table's ``PUT_SIZE`` existing rows of ``cls`` (each with a new
    name) against one executemany upsert of the same rows' columns."""
    engine = store.engine
    table = cls.__table__
    dialect_insert = postgresql.insert if backend == "postgresql" else sqlite.insert
    insert = dialect_insert(table)
    upsert = insert.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={c: insert.excluded[c.key] for c in table.c if c.key != "id"},
    )
    columns = [c.key for c in table.c]
    version = itertools.count(1)
    pending: dict[str, list[Any]] = {}

    def changed(label: str) -> None:
        # The rows of the table, each with a new name: every sample really updates them.
        n = next(version)
        batch = make(PUT_SIZE)
        for row in batch:
            row.name = f"v{n}-{row.id}"
        pending[label] = batch

    def store_update() -> int:
        batch = pending.pop("stockpyle")
        store.batch_put(batch)
        return len(batch)

    def raw_upsert() -> int:
        batch = pending.pop("upsert")
        params = [{c: getattr(row, c) for c in columns} for row in batch]
        with engine.begin() as conn:
            conn.execute(upsert, params)
        return len(batch)

    def check_update() -> None:
        for label, work in (("stockpyle", store_update), ("upsert", raw_upsert)):
            changed(label)
            expected = pending[label][-1].name
            work()
            found = store.get(cls, {"id": PUT_SIZE - 1})
            assert found is not None and found.name == expected, (label, found)

    suffix = "" if what == "rows" else "-" + what.split()[0]
    return Case(
        f"sql {backend} batch_put({PUT_SIZE}) of existing {what}",
        f"sql-upsert{suffix}-{backend}",
        PUT_SIZE,
        {"stockpyle": store_update, "executemany upsert": raw_upsert},
        prepare={
            "stockpyle": lambda: changed("stockpyle"),
            "executemany upsert": lambda: changed("upsert"),
        },
        rounds=ctx.rounds(20),
        check=check_update,
    )


def cases(ctx: Context) -> list[Case]:
    out: list[Case] = []
    for backend, url in ctx.sql_urls.items():
        out.extend(_backend_cases(ctx, backend, url))
    return out
