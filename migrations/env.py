"""Alembic environment. kamengd passes the connection in (kamengd.operations.schema);
`alembic -x url=...` works too for developers."""
from alembic import context
from alembic.operations import ops

from kamengd import models  # noqa: F401  (fills the metadata)
from kamengd.database import make_engine
from kamengd.extensions import db

config = context.config
target_metadata = db.metadata


# Every table gets these on MySQL/MariaDB, whatever the server's defaults
# (tests/test_cli.py checks the collation of every table).
TABLE_OPTS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def add_table_options(_context, _revision, directives):
    """Autogenerate runs against SQLite: give new tables the MySQL options."""
    for script in directives:
        for op in script.upgrade_ops.ops:
            if isinstance(op, ops.CreateTableOp):
                op.kw.update(TABLE_OPTS)


def run(connection):
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True,
                      process_revision_directives=add_table_options)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = make_engine(url, foreign_keys=False, pooled=False)
    with engine.begin() as conn:
        run(conn)
