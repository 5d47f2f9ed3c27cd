"""Bulk writes for a submitted plan: primary keys reserved up front, rows streamed with the driver's fastest path
(PostgreSQL's COPY with psycopg 3, SQLite's executemany), inside the caller's transaction. SQLAlchemy's
executemany builds parameters row by row, which costs more than the SQL once a plan has tens of thousands of
tasks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table, text
from sqlalchemy.orm import Session


def reserve_primary_keys(session: Session, table: Table, count: int) -> list[int]:
    """`count` primary keys of `table` nobody else gets. PostgreSQL draws them from the column's sequence; on
    SQLite the writing transaction (BEGIN IMMEDIATE) already excludes every other writer, so the keys after the
    largest one are free."""
    if count == 0:
        return []
    (pk,) = table.primary_key.columns
    if session.get_bind().dialect.name == "postgresql":
        sequence = session.execute(
            text("SELECT pg_get_serial_sequence(:table, :column)"), {"table": table.name, "column": pk.name}
        ).scalar_one()
        # The sequence by name, looked up once (the lookup per key cost five times the keys); one array, not
        # `count` rows: fetching rows one by one costs more than drawing the keys.
        drawn = session.execute(
            text("SELECT array_agg(nextval(CAST(:sequence AS regclass))) FROM generate_series(1, :count)"),
            {"sequence": sequence, "count": count},
        ).scalar_one()
        return list(drawn)
    largest = session.execute(text(f"SELECT coalesce(max({pk.name}), 0) FROM {table.name}")).scalar_one()
    return list(range(int(largest) + 1, int(largest) + 1 + count))


def insert_rows(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Insert `rows` (values in `columns` order, already in the database's form: JSON as text, enums as their
    values) into `table` in the session's transaction."""
    connection = session.connection()
    names = ", ".join(columns)
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        dbapi_connection = cast(Any, connection.connection.dbapi_connection)
        with dbapi_connection.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    values = list(rows)
    if not values:  # an empty list would be taken for a single statement without parameters
        return
    if connection.dialect.name == "sqlite":
        marks = ", ".join("?" for _ in columns)
        connection.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", values)
    else:  # another driver: SQLAlchemy's own executemany
        connection.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in values])
