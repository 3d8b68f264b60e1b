"""SQLite's WAL is checkpointed by kamengd's writers after they let go of the write lock.

SQLite would checkpoint inside the committing call, every thousand pages,
while kamengd's writer gate is still held. The gate leaves that to a passive
checkpoint every CHECKPOINT_EVERY commits: the WAL stays small all the same.
"""
import os

import sqlalchemy as sa

from kamengd.database import _WriterGate, make_engine


def test_many_small_commits_keep_the_wal_small(tmp_path):
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
    commits = 5 * _WriterGate.CHECKPOINT_EVERY
    for i in range(commits):   # each commit writes a new page or two
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t (data) VALUES (:d)"), {"d": os.urandom(3000)})
    with engine.connect() as conn:   # open: the last connection to close would checkpoint it all
        autocheckpoint = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == commits
        wal_pages = os.path.getsize(tmp_path / "wal.db-wal") // 4096
    engine.dispose()
    # SQLite alone (its threshold raised to a safety net) would let the WAL
    # grow to every page written here; the gate's checkpoints restart it.
    assert autocheckpoint > commits * 2
    assert wal_pages < commits, wal_pages   # unchecked, each of these commits appends three
