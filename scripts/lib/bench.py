"""kamengd benchmarks: each prints its figures. Run through scripts/bench."""
from __future__ import annotations

import argparse
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def kamengd(*args, env=None, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kamengd", *args], env=env, stdin=stdin,
                          capture_output=True, text=True, check=False)


def install(workdir: Path, database_url: str | None) -> dict:
    pw = workdir / "pw"
    pw.write_text("bench-password\n")
    args = ["install", "--data-dir", str(workdir / "data"), "--admin-password-file", str(pw), "--yes"]
    if database_url:
        args += ["--database-url", database_url]
    r = kamengd(*args)
    if r.returncode:
        sys.exit(f"install failed: {r.stderr.strip()}")
    env = {**os.environ, "KAMENGD_CONFIG": r.stdout.strip(), "KAMENGD_RATELIMIT_ENABLED": "0"}
    return env


def bench_import(args) -> None:
    with tempfile.TemporaryDirectory(prefix="kamengd-bench-") as tmp:
        work = Path(tmp)
        env = install(work, args.database_url)
        r = kamengd("product", "create", "--name", "bench", "--price", "1.00", "--json", env=env)
        if r.returncode:
            sys.exit(r.stderr)
        product_id = __import__("json").loads(r.stdout)["id"]
        keys_file = work / "keys.txt"
        t0 = time.perf_counter()
        with open(keys_file, "w") as fh:
            for _ in range(args.n // 10000):
                fh.write("".join(f"{secrets.token_hex(12)}\n" for _ in range(10000)))
            fh.write("".join(f"{secrets.token_hex(12)}\n" for _ in range(args.n % 10000)))
        gen = time.perf_counter() - t0
        size = keys_file.stat().st_size
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "kamengd", "keys", "import", "--product",
                                 str(product_id), str(keys_file), "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        out, err = proc.stdout.read(), proc.stderr.read()
        if status != 0:
            sys.exit(f"import failed: {err.strip()}")
        db = "SQLite" if not args.database_url else args.database_url.split(":")[0]
        print(f"machine: {machine()}")
        print(f"database: {db}")
        print(f"keys: {args.n:,} ({size / 1e6:.1f} MB file, generated in {gen:.1f} s)")
        print(f"result: {out.strip()}")
        print(f"import time: {elapsed:.2f} s (end to end, `kamengd keys import`)")
        print(f"rate: {args.n / elapsed:,.0f} keys/s")
        print(f"peak RSS: {usage.ru_maxrss / 1024:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    sub = parser.add_subparsers(dest="what", required=True)
    imp = sub.add_parser("import", help="time `kamengd keys import` of N random keys")
    imp.add_argument("-n", type=int, default=1_000_000)
    imp.add_argument("--database-url", help="default: SQLite in a temporary directory")
    args = parser.parse_args()
    {"import": bench_import}[args.what](args)


if __name__ == "__main__":
    main()
