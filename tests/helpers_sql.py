"""SQL fixtures shared by the SQL test modules (a plugin loaded by conftest.py).

SQLAlchemy is imported inside the fixtures, so test runs without it (the setuptools leg of CI)
can still load this plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def pg_url(postgres_url: str) -> Iterator[str]:
    """The PostgreSQL URL, with a schema of its own per test process (dropped at the end)."""
    from stockpyle.testing.sqlmodels import drop_isolated_schema, isolated_postgres_url

    yield isolated_postgres_url(postgres_url)
    drop_isolated_schema(postgres_url)


@pytest.fixture(scope="module")
def pg_engine(pg_url: str) -> Iterator[Any]:
    """One engine (``sqlalchemy.Engine``) for preparing the PostgreSQL test tables."""
    import sqlalchemy as sa

    from stockpyle.testing.sqlmodels import SqlBase

    engine = sa.create_engine(pg_url)
    SqlBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite-file", pytest.param("postgres", marks=pytest.mark.postgres)])
def file_or_pg_engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """An engine over empty test tables, on a SQLite file, then on PostgreSQL."""
    import sqlalchemy as sa

    from stockpyle.testing.sqlmodels import clear_tables

    if request.param == "postgres":
        engine = sa.create_engine(request.getfixturevalue("pg_url"))
    else:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'test.sqlite'}")
    clear_tables(engine)
    yield engine
    engine.dispose()
