"""Alembic environment. kamengd passes the connection in (kamengd.schema);
`alembic -x url=...` works too for developers."""
from alembic import context

from kamengd import models  # noqa: F401  (fills the metadata)
from kamengd.database import make_engine
from kamengd.extensions import db

config = context.config
target_metadata = db.metadata


def run(connection):
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True)
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
