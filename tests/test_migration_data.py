"""A shop's data survives `kamengd upgrade` from every revision, on every backend.

For each revision before head: a fresh database is migrated to it, every table
it has gets three rows, the database goes to head, and every row must still be
there with every surviving column unchanged. The rows are made from the
reflected schema, not from the models, so a table added by a future migration
is filled without touching this file; CHECK constraints of the usual shapes
(`c IN (...)`, `c >= 1`, `a >= b`) are read and obeyed. A constraint the
filler cannot satisfy fails with its table and column, to be given an entry
in OVERRIDES.

The realistic-shop-at-the-first-revision case is the 0001 parameter: every
table of 0001 filled, foreign keys between them, through every migration.
"""
from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import mysql

from kamengd.database import make_engine
from kamengd.operations.schema import alembic_config, head_revision, upgrade

ROWS_PER_TABLE = 3
NULLS_ROW = 1  # this row stores NULL in every nullable column; the others store values

# (table, column) -> fn(row_index, values_so_far) for a column whose
# constraint the generic filler cannot satisfy (shapes parse_check() does not
# read: BETWEEN, OR, <>).
OVERRIDES: dict[tuple[str, str], Callable[[int, dict], object]] = {
    ("agent_levels", "discount_bp"): lambda i, _values: 1250 * i,              # BETWEEN 0 AND 10000
    ("ledger_accounts", "balance_cents"): lambda i, _values: 1234 * i,         # may_go_negative OR >= 0
    ("ledger_entries", "amount_cents"): lambda i, _values: (-1) ** i * 1234,   # <> 0
    ("agent_level_rules", "days"): lambda i, _values: 7 * i + 1,               # BETWEEN 1 AND 366
    ("supplier_products", "markup_kind"): lambda i, _values: ("fixed", None, "percent")[i % 3],   # NULL OR IN
    # discount_shape: a fixed coupon has cents and no percent, a percent one the reverse.
    ("coupons", "kind"): lambda i, _values: ("fixed", "percent")[i % 2],
    ("coupons", "amount_off_cents"): lambda i, values: 500 + i if values["kind"] == "fixed" else None,
    ("coupons", "percent_off_bp"): lambda i, values: 1000 + i if values["kind"] == "percent" else None,
    # scope_target: only an 'all' coupon has no target.
    ("coupons", "scope"): lambda i, _values: ("all", "product", "category")[i % 3],
    ("coupons", "scope_id"): lambda i, values: None if values["scope"] == "all" else 7 + i,
    # uses_within_limit: used <= max_uses where there is a maximum.
    ("coupons", "used"): lambda i, _values: i,
    ("coupons", "max_uses"): lambda i, _values: None if i == 1 else 10 + i,
    # voucher_terms_shape: a uses voucher has a use or more, a stored-value one a value.
    ("voucher_terms", "kind"): lambda i, _values: ("uses", "value")[i % 2],
    ("voucher_terms", "uses"): lambda i, values: 1 + i if values["kind"] == "uses" else 0,
    ("voucher_terms", "value_cents"): lambda i, values: 5000 + i if values["kind"] == "value" else 0,
}


def revisions_base_to_head() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


REVISIONS = revisions_base_to_head()


# --- reading CHECK constraints ----------------------------------------------

IDENT = r"[`\"\[]?(\w+)[`\"\]]?"
LITERAL = re.compile(r"'((?:[^']|'')*)'|(-?\d+)")


@dataclass
class Rules:
    """What one table's CHECK constraints ask of its columns."""
    choices: dict[str, list] = field(default_factory=dict)        # c IN (...)
    lower: dict[str, int] = field(default_factory=dict)           # c >= n, c > n
    upper: dict[str, int] = field(default_factory=dict)           # c <= n, c < n
    relations: list[tuple[str, str, str]] = field(default_factory=list)  # (a, op, b): a op b
    unparsed: list[str] = field(default_factory=list)


def literal_values(text: str) -> list:
    return [s.replace("''", "'") if n == "" else int(n) for s, n in LITERAL.findall(text)]


def parse_check(sqltext: str, columns: set[str], rules: Rules) -> None:
    """SQLite reflects `status IN ('a', 'b')`, MariaDB "`status` in ('a','b')"."""
    text = sqltext.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    for clause in re.split(r"\s+and\s+", text, flags=re.I):
        clause = clause.strip()
        if m := re.fullmatch(IDENT + r"\s+in\s*\((.*)\)", clause, flags=re.I | re.S):
            rules.choices[m[1]] = literal_values(m[2])
        elif (m := re.fullmatch(IDENT + r"\s*(>=|>|<=|<)\s*(-?\d+)", clause)):
            bound = int(m[3])
            if m[2].startswith(">"):
                rules.lower[m[1]] = bound + (m[2] == ">")
            else:
                rules.upper[m[1]] = bound - (m[2] == "<")
        elif (m := re.fullmatch(IDENT + r"\s*(>=|>|<=|<)\s*" + IDENT, clause)) and {m[1], m[3]} <= columns:
            rules.relations.append((m[1], m[2], m[3]))
        else:
            rules.unparsed.append(clause)


def table_rules(table: sa.Table) -> Rules:
    rules = Rules()
    names = set(table.c.keys())
    for constraint in table.constraints:
        if isinstance(constraint, sa.CheckConstraint):
            parse_check(str(constraint.sqltext), names, rules)
    return rules


# --- making values ------------------------------------------------------------

BASE_TIME = dt.datetime(2026, 11, 22, 9, 30, 15, 123456)


def is_boolean(type_) -> bool:
    # MySQL reflects BOOLEAN as TINYINT(1).
    return isinstance(type_, sa.Boolean) or (isinstance(type_, mysql.TINYINT) and type_.display_width == 1)


def integer_for(type_, row: int, position: int) -> int:
    # Each width filled well past the next narrower one, so a column narrowed
    # by a migration fails or changes its values instead of passing unseen.
    if isinstance(type_, sa.BigInteger):
        return 2**40 + row * 1000 + position
    if isinstance(type_, sa.SmallInteger):
        return 1000 + row * 100 + position
    if isinstance(type_, (mysql.TINYINT, mysql.MEDIUMINT)):
        return 10 + row * 10 + position % 10
    return 2**30 + row * 1000 + position


def text_for(type_, row: int, label: str) -> str:
    # The row number first so that truncation keeps values unique; then
    # non-ASCII, a 4-byte character and both quotes as early as fits.
    value = f"{row}中'\"🔑 {label} 卡密 O'Brien \"引号\" \\ % _\nline 2"
    length = getattr(type_, "length", None)
    return value[:length] if length else value


def bytes_for(type_, row: int, position: int) -> bytes:
    # Declared length for BINARY(n) (MySQL would pad a shorter value); the
    # bytes include NUL, 0xff and invalid UTF-8.
    length = getattr(type_, "length", None) or 24
    pattern = bytes([row, 0x00, 0xFF, 0xC3, 0x28]) + bytes((row * 31 + position * 7 + i * 13) % 256
                                                            for i in range(length))
    return pattern[:length]


def generic_value(table: sa.Table, column: sa.Column, row: int, position: int):
    type_ = column.type
    label = f"{table.name}.{column.name}"
    if is_boolean(type_):
        return row % 2 == 0
    if isinstance(type_, sa.Enum) and type_.enums:
        return type_.enums[(row + position) % len(type_.enums)]
    if isinstance(type_, sa.Integer):
        return integer_for(type_, row, position)
    if isinstance(type_, sa.Float):
        return row + 0.5
    if isinstance(type_, sa.Numeric):
        scale = type_.scale or 0
        return decimal.Decimal(f"{row * 100 + position}.{'7' * scale}" if scale else row * 100 + position)
    if isinstance(type_, sa.DateTime):
        return BASE_TIME + dt.timedelta(days=row, minutes=position, microseconds=row * 1111 + position)
    if isinstance(type_, sa.Date):
        return BASE_TIME.date() + dt.timedelta(days=row * 40 + position)
    if isinstance(type_, sa.Time):
        return dt.time(12, row, position % 60, 654321)
    if isinstance(type_, sa.JSON):
        return {"row": row, "名字": "值 'q' \"dq\""}
    if isinstance(type_, sa.Uuid):
        return uuid.UUID(int=row * 1000 + position + 1)
    if isinstance(type_, sa.String):
        return text_for(type_, row, label)
    if isinstance(type_, (sa.LargeBinary, sa.types._Binary)):
        return bytes_for(type_, row, position)
    raise AssertionError(f"{label}: the filler has no value for type {type_!r}; "
                         f"add OVERRIDES[({table.name!r}, {column.name!r})] in {__file__}")


def obey_rules(values: dict, rules: Rules, row: int, position_of: dict[str, int]) -> None:
    for name, choices in rules.choices.items():
        if values.get(name) is not None and choices:
            values[name] = choices[(row + position_of[name]) % len(choices)]
    for name, bound in rules.lower.items():
        if isinstance(values.get(name), int):
            values[name] = max(values[name], bound)
    for name, bound in rules.upper.items():
        if isinstance(values.get(name), int):
            values[name] = min(values[name], bound)
    for a, op, b in rules.relations:
        if not (isinstance(values.get(a), int) and isinstance(values.get(b), int)):
            continue
        step = 1 if op in (">", "<") else 0
        if op.startswith(">"):
            values[a] = max(values[a], values[b] + step)
        else:
            values[a] = min(values[a], values[b] - step)


# --- filling a database -----------------------------------------------------


def reflect(conn: sa.Connection) -> sa.MetaData:
    metadata = sa.MetaData()
    metadata.reflect(conn)
    if "alembic_version" in metadata.tables:
        metadata.remove(metadata.tables["alembic_version"])
    return metadata


def row_key(table: sa.Table) -> list[str]:
    """How a row is found again at head: its primary key, or all of it."""
    return [c.name for c in (table.primary_key.columns or table.columns)]


def existing_keys(conn: sa.Connection, table: sa.Table) -> set[tuple]:
    columns = [table.c[name] for name in row_key(table)]
    return {tuple(normalise(v) for v in r) for r in conn.execute(sa.select(*columns))}


def integer_pk_start(conn: sa.Connection, table: sa.Table) -> int | None:
    """Our ids go above any seed row's (audit_head id 1, …)."""
    pk = list(table.primary_key.columns)
    if len(pk) != 1 or not isinstance(pk[0].type, sa.Integer):
        return None
    return (conn.execute(sa.select(sa.func.max(pk[0]))).scalar() or 0) + 1


def make_row(table: sa.Table, row: int, rules: Rules, pk_start: int | None,
             inserted: dict[str, list[dict]]) -> dict:
    position_of = {c.name: i for i, c in enumerate(table.columns)}
    values = {}
    for column in table.columns:
        if column.nullable and row == NULLS_ROW and not column.primary_key:
            values[column.name] = None
        elif column.primary_key and pk_start is not None:
            values[column.name] = pk_start + row
        else:
            values[column.name] = generic_value(table, column, row, position_of[column.name])
    obey_rules(values, rules, row, position_of)
    for fk in table.foreign_key_constraints:
        # Point at one of the rows put in the parent table (sorted_tables
        # fills parents first); a nullable reference stays NULL in NULLS_ROW.
        local = [c.name for c in fk.columns]
        if row == NULLS_ROW and all(table.c[name].nullable for name in local):
            continue
        if fk.referred_table is table:  # a self-reference: the row points at itself
            parent = values
        else:
            parents = inserted[fk.referred_table.name]
            parent = parents[row % len(parents)]
        for name, element in zip(local, fk.elements):
            values[name] = parent[element.column.name]
    for (table_name, column_name), override in OVERRIDES.items():
        if table_name == table.name and column_name in values:
            values[column_name] = override(row, values)
    return values


def explain_failure(table: sa.Table, rules: Rules, exc: sa.exc.DBAPIError) -> str:
    """Name the constraint, its SQL and columns, and the OVERRIDES entry to add."""
    message = str(exc.orig)
    # Longest name first: uq_t_a_b is not to be reported as uq_t_a.
    for constraint in sorted(table.constraints, key=lambda c: -len(str(c.name or ""))):
        if constraint.name and str(constraint.name) in message:
            sql = str(getattr(constraint, "sqltext", "")) or type(constraint).__name__
            columns = ([c.name for c in constraint.columns] if not isinstance(constraint, sa.CheckConstraint)
                       else [c.name for c in table.columns if re.search(rf"\b{c.name}\b", sql)])
            return (f"cannot fill table {table.name!r}: constraint {constraint.name} ({sql}) rejected "
                    f"the generated row ({message}); add OVERRIDES[({table.name!r}, <one of {columns}>)] "
                    f"in {__file__}")
    return (f"cannot fill table {table.name!r}: {message}; add OVERRIDES[({table.name!r}, <the column "
            f"named above>)] in {__file__}" + (f" (CHECK clauses not understood: {rules.unparsed})"
                                               if rules.unparsed else ""))


def fill(conn: sa.Connection, metadata: sa.MetaData) -> dict[str, list[dict]]:
    """ROWS_PER_TABLE rows in every table, parents first; returns them by table."""
    inserted: dict[str, list[dict]] = {}
    for table in metadata.sorted_tables:
        rules = table_rules(table)
        pk_start = integer_pk_start(conn, table)
        rows = [make_row(table, row, rules, pk_start, inserted) for row in range(ROWS_PER_TABLE)]
        try:
            with conn.begin_nested():
                conn.execute(table.insert(), rows)
        except sa.exc.DBAPIError as exc:
            raise AssertionError(explain_failure(table, rules, exc)) from exc
        inserted[table.name] = rows
    return inserted


# --- comparing ----------------------------------------------------------------


def normalise(value):
    """Booleans come back as 0/1 from MySQL, binary as memoryview or bytearray."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (memoryview, bytearray)):
        return bytes(value)
    return value


def rows_at_head(conn: sa.Connection, table: sa.Table, key: list[str]) -> dict[tuple, dict]:
    return {tuple(normalise(r[k]) for k in key): {k: normalise(v) for k, v in r.items()}
            for r in conn.execute(sa.select(table)).mappings()}


def assert_rows_kept(conn, head: sa.MetaData, name: str, inserted: list[dict], key: list[str],
                     seeds: set[tuple], seed_count_at_head: int) -> None:
    table = head.tables[name]
    assert set(key) <= set(table.c.keys()), f"{name}: key columns {key} are gone at head"
    found = rows_at_head(conn, table, key)
    for row in inserted:
        pk = tuple(normalise(row[k]) for k in key)
        assert pk in found, f"{name}: row {pk} is missing at head"
        expected = {k: normalise(v) for k, v in row.items() if k in table.c}
        actual = {k: found[pk][k] for k in expected}
        assert actual == expected, f"{name}: row {pk} changed"
    missing_seeds = seeds - set(found)
    assert not missing_seeds, f"{name}: rows {missing_seeds} that were there before are gone at head"
    assert len(found) == len(inserted) + seed_count_at_head, \
        f"{name}: {len(found)} rows at head, expected {len(inserted)} inserted + {seed_count_at_head} seeded"


def orphans(conn: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """References to missing rows: SQLite rebuilds tables with foreign keys off."""
    found = []
    for table in metadata.sorted_tables:
        for fk in table.foreign_key_constraints:
            parent = fk.referred_table
            match = sa.and_(*(el.column == col for col, el in zip(fk.columns, fk.elements)))
            query = (sa.select(sa.func.count()).select_from(table)
                     .where(*(col.is_not(None) for col in fk.columns))
                     .where(~sa.exists().where(match)))
            if count := conn.execute(query).scalar():
                found.append(f"{table.name} -> {parent.name}: {count}")
    return found


# --- tests --------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_counts_at_head(backend, databases) -> dict[str, int]:
    """Rows the migrations themselves put in each table (audit_head, scheduler_lease)."""
    url = databases.new_url(backend)
    upgrade(url)
    engine = make_engine(url, pooled=False)
    try:
        with engine.connect() as conn:
            return {name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                    for name, table in reflect(conn).tables.items()}
    finally:
        engine.dispose()


def test_revisions_are_found():
    assert REVISIONS[0] == "0001" and REVISIONS[-1] == head_revision()


@pytest.mark.parametrize("revision", REVISIONS[:-1])
def test_data_written_at_a_revision_survives_upgrade_to_head(backend, databases, revision,
                                                             seed_counts_at_head):
    url = databases.new_url(backend)
    upgrade(url, revision)
    engine = make_engine(url, pooled=False)
    try:
        with engine.begin() as conn:
            metadata = reflect(conn)
            seeds = {name: existing_keys(conn, table) for name, table in metadata.tables.items()}
            inserted = fill(conn, metadata)

        # Upgrading alone must do: no downgrade, no manual step.
        assert upgrade(url) == (revision, head_revision())

        with engine.connect() as conn:
            head = reflect(conn)
            for name, rows in inserted.items():
                if name not in head.tables:
                    continue  # dropped on purpose by a later migration
                assert_rows_kept(conn, head, name, rows, row_key(metadata.tables[name]), seeds[name],
                                 seed_counts_at_head[name])
            assert orphans(conn, head) == []
    finally:
        engine.dispose()


def test_check_constraints_are_read():
    """The shapes the migrations use, as SQLite and MariaDB reflect them."""
    rules = Rules()
    columns = {"status", "min_quantity", "max_quantity", "price_cents"}
    parse_check("status IN ('pending', 'it''s')", columns, rules)
    parse_check("`min_quantity` >= 1 and `max_quantity` >= `min_quantity`", columns, rules)
    parse_check("`price_cents` > 0", columns, rules)
    parse_check("length(status) > 2", columns, rules)
    assert rules.choices == {"status": ["pending", "it's"]}
    assert rules.lower == {"min_quantity": 1, "price_cents": 1}
    assert rules.relations == [("max_quantity", ">=", "min_quantity")]
    assert rules.unparsed == ["length(status) > 2"]
