"""Card keys are never stored in clear: search every stored byte for them."""
import json
import secrets

import sqlalchemy as sa

from conftest import run_cli, write_password


def test_no_plaintext_key_in_the_database(backend, databases, tmp_path):
    pw = write_password(tmp_path)
    args = ["install", "--data-dir", tmp_path / "data", "--admin-password-file", pw, "--yes"]
    if backend != "sqlite":
        args += ["--database-url", databases.new_url(backend)]
    run_cli(*args, check=True)
    config = tmp_path / "data" / "kamengd.toml"
    pid = json.loads(run_cli("product", "create", "--name", "p", "--price", "1", "--json",
                             config=config, check=True).out)["id"]
    keys = [f"PLAIN-{secrets.token_hex(10)}" for _ in range(500)] + ["卡密-明文-测试-0001"]
    run_cli("keys", "import", "--product", pid, "-", config=config, input="\n".join(keys).encode(), check=True)
    # An export must not leave the keys behind in the database either.
    run_cli("keys", "export", "--product", pid, "--output", tmp_path / "out.txt", config=config, check=True)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").split() == keys

    if backend == "sqlite":
        stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("kamengd.db*"))
    else:
        stored = dump_mysql(config)
    assert len(stored) > 500 * 28  # the ciphertexts are there
    for key in keys:
        for encoding in ("utf-8", "utf-16-le", "gb18030"):
            assert key.encode(encoding) not in stored, key
        assert key.encode().hex().encode() not in stored.lower()


def dump_mysql(config) -> bytes:
    """Every value of every table, as the server returns it."""
    from kamengd.config import load_config
    from kamengd.database import make_engine

    engine = make_engine(load_config(config, env={}).database_url, pooled=False)
    chunks = []
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f"SELECT * FROM `{table}`")):
                for value in row:
                    chunks.append(value if isinstance(value, bytes) else str(value).encode())
    engine.dispose()
    return b"\x00".join(chunks)
