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
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")},
           "KAMENGD_CONFIG": r.stdout.strip(), "KAMENGD_RATELIMIT_ENABLED": "0"}
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


def _timed(*args, env) -> tuple[float, int, str]:
    """(seconds, peak RSS in MB, stdout) of one `kamengd` command."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kamengd", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if status != 0:
        sys.exit(f"kamengd {args[0]} failed: {err.strip()}")
    return elapsed, usage.ru_maxrss // 1024, out


def bench_backup(args) -> None:
    import json

    with tempfile.TemporaryDirectory(prefix="kamengd-bench-") as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        env = install(work / "src", args.database_url)
        r = kamengd("product", "create", "--name", "bench", "--price", "1.00", "--json", env=env)
        product_id = json.loads(r.stdout)["id"]
        keys_file = work / "keys.txt"
        with open(keys_file, "w") as fh:
            for start in range(0, args.n, 10000):
                fh.write("".join(f"{secrets.token_hex(12)}\n" for _ in range(min(10000, args.n - start))))
        _timed("keys", "import", "--product", str(product_id), str(keys_file), env=env)
        archive = work / "shop.tar.gz"
        took, rss, _ = _timed("backup", "--output", str(archive), env=env)
        print(f"machine: {machine()}")
        print(f"source: {'SQLite' if not args.database_url else args.database_url.split(':')[0]}, "
              f"{args.n:,} card keys")
        print(f"backup: {took:.1f} s, archive {archive.stat().st_size / 1e6:.0f} MB, peak RSS {rss} MB")
        (work / "dst").mkdir()
        target = install(work / "dst", args.restore_url)
        src_key = Path(env["KAMENGD_CONFIG"]).parent / "data.key"
        dst_key = Path(target["KAMENGD_CONFIG"]).parent / "data.key"
        dst_key.unlink()
        dst_key.write_bytes(src_key.read_bytes())
        dst_key.chmod(0o600)
        took, rss, out = _timed("restore", str(archive), "--json", env=target)
        print(f"restore into {'SQLite' if not args.restore_url else args.restore_url.split(':')[0]}: {took:.1f} s "
              f"(incl. decrypting every key once), peak RSS {rss} MB: {out.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    sub = parser.add_subparsers(dest="what", required=True)
    imp = sub.add_parser("import", help="time `kamengd keys import` of N random keys")
    imp.add_argument("-n", type=int, default=1_000_000)
    imp.add_argument("--database-url", help="default: SQLite in a temporary directory")
    co = sub.add_parser("checkout", help="kamengd's purchase path beside a bare reserve endpoint, one run")
    co.add_argument("-n", type=int, default=3000, help="operations per phase")
    co.add_argument("--clients", type=int, default=32, help="concurrent clients")
    co.add_argument("--processes", type=int, default=4, help="client processes the clients are spread over")
    co.add_argument("--workers", type=int, default=3, help="gunicorn workers (both servers; kamengd's default)")
    co.add_argument("--threads", type=int, default=1,
                    help="threads per worker (both servers; 1: sync workers, kamengd's default; more: gthread)")
    co.add_argument("--server", default="gunicorn", choices=("gunicorn", "waitress"), help="kamengd's server")
    co.add_argument("--forged-flood", type=int, default=0, metavar="N",
                    help="then the purchases again while N forged callbacks (bad signatures) pour in")
    co.add_argument("--coupons", action="store_true", help="every order with a coupon (W5)")
    co.add_argument("--risk", action="store_true", help="with seven risk rules on, none tripped (W5)")
    co.add_argument("--show-errors", action="store_true", help="kamengd's stderr to the terminal")
    co.add_argument("--database-url", help="default: SQLite in a temporary directory")
    ag = sub.add_parser("agents", help="orders paid from balances through the signed agent API by many "
                                       "agents, beside the buyers' order creation of the same run")
    api = sub.add_parser("api", help="signed agent orders/s at 32 concurrent clients as a ratio of the buyers' "
                                     "order creation measured in the same run (target: at least 0.4)")
    for agents_bench in (ag, api):   # `api` is `agents` judged against W3's target
        agents_bench.add_argument("-n", type=int, default=3000, help="orders a phase")
        agents_bench.add_argument("--agents", type=int, default=32, help="agents (each with its key and balance)")
        agents_bench.add_argument("--clients", type=int, default=32, help="concurrent clients")
        agents_bench.add_argument("--processes", type=int, default=4,
                                  help="client processes the clients are spread over")
        agents_bench.add_argument("--workers", type=int, default=3, help="gunicorn workers (kamengd's default)")
        agents_bench.add_argument("--server", default="gunicorn", choices=("gunicorn", "waitress"),
                                  help="kamengd's server")
        agents_bench.add_argument("--database-url", help="default: SQLite in a temporary directory")
    pn = sub.add_parser("panel", help="the staff panel through a real server: 2FA sign-in, an upload of "
                                      "N keys, page times")
    pn.add_argument("-n", type=int, default=10_000, help="keys in the upload")
    pn.add_argument("--requests", type=int, default=30, help="requests per page for the page times")
    pn.add_argument("--database-url", help="default: SQLite in a temporary directory")
    bk = sub.add_parser("backup", help="time `kamengd backup` and `kamengd restore` of a shop with N keys")
    bk.add_argument("-n", type=int, default=1_000_000)
    bk.add_argument("--database-url", help="source; default: SQLite in a temporary directory")
    bk.add_argument("--restore-url", help="target; default: SQLite in a temporary directory")
    vo = sub.add_parser("vouchers", help="redemptions/s at 16 verifier terminals through a real server, then 16 "
                                         "terminals racing for the same codes and one stored-value card")
    vo.add_argument("-n", type=int, default=5000, help="single-use codes redeemed once each")
    vo.add_argument("--race", type=int, default=300, help="codes every terminal tries (exactly one may win each)")
    vo.add_argument("--value", default="200.00", help="the stored-value card taken from 1.00 at a time")
    vo.add_argument("--terminals", type=int, default=16, help="verifier terminals (each signed in)")
    vo.add_argument("--processes", type=int, default=4, help="client processes the terminals are spread over")
    vo.add_argument("--database-url", help="default: SQLite in a temporary directory")
    rp = sub.add_parser("reports", help="a shop with N orders over a year: the staff's figures timed (W7: each "
                                        "under 300 ms at 1,000,000 orders)")
    rp.add_argument("-n", type=int, default=1_000_000, help="orders seeded over the year before now")
    rp.add_argument("--repeat", type=int, default=5, help="timed runs of each figure (the median is printed)")
    rp.add_argument("--export", type=int, default=1, help="0: skip the exports of every order")
    rp.add_argument("--formats", default="csv,xlsx", help="the exports' formats")
    rp.add_argument("--seed", type=int, default=7, help="the random seed of the data")
    rp.add_argument("--database-url", help="default: SQLite in a temporary directory (MariaDB: an empty database)")
    rp.add_argument("--keep", metavar="DIR", help="install and seed into DIR and keep it; a second run with the same "
                                                  "DIR times the figures again without seeding")
    args = parser.parse_args()
    {"reports": bench_reports, "vouchers": bench_vouchers, "import": bench_import, "checkout": bench_checkout, "backup": bench_backup,
     "panel": bench_panel, "agents": bench_agents, "api": bench_api}[args.what](args)



def bench_checkout(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_checkout import bench_checkout as run

    run(args, kamengd=kamengd, install=install, machine=machine)


def bench_vouchers(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_vouchers import bench_vouchers as run

    run(args, kamengd=kamengd, install=install, machine=machine)


def bench_reports(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_reports import bench_reports as run

    run(args, install=install, machine=machine)


def bench_agents(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_agents import bench_agents as run

    run(args, kamengd=kamengd, install=install, machine=machine)


def bench_api(args) -> None:
    """The agents' bench, judged by W3's figure: agent orders at least 0.4x the buyers' orders."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_agents import bench_agents as run

    run(args, kamengd=kamengd, install=install, machine=machine, target=0.4)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(env, port):
    import urllib.request

    server = subprocess.Popen([sys.executable, "-m", "kamengd", "serve", "--bind", f"127.0.0.1:{port}",
                               "--no-scheduler"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("the server did not come up")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_panel(args) -> None:
    """A staff member in the panel: sign-in with 2FA, upload N keys as a file, then page times."""
    import http.cookiejar
    import json as jsonlib
    import re
    import urllib.parse
    import urllib.request

    import pyotp

    with tempfile.TemporaryDirectory(prefix="kamengd-bench-") as tmp:
        work = Path(tmp)
        env = install(work, args.database_url)
        pid = jsonlib.loads(kamengd("product", "create", "--name", "bench", "--price", "1.00", "--json",
                                    env=env).stdout)["id"]
        secret = _enrol(env["KAMENGD_CONFIG"], "admin")
        keys = work / "keys.txt"
        keys.write_text("".join(f"PANEL-{secrets.token_hex(10)}\n" for _ in range(args.n)))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = _serve(env, port)
        try:
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

            def get(path):
                with opener.open(base + path, timeout=120) as resp:
                    return resp.read().decode()

            def post(path, fields, files=None):
                boundary = secrets.token_hex(16)
                parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                         for k, v in fields.items()]
                for name, path_ in (files or {}).items():
                    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                                 f'filename="{path_.name}"\r\nContent-Type: text/plain\r\n\r\n'.encode()
                                 + path_.read_bytes() + b"\r\n")
                body = b"".join(parts) + f"--{boundary}--\r\n".encode()
                req = urllib.request.Request(base + path, data=body, method="POST", headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}"})
                with opener.open(req, timeout=600) as resp:
                    return resp.read().decode()

            def csrf(html):
                return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)

            t0 = time.perf_counter()
            post("/admin/login", {"csrf_token": csrf(get("/admin/login")), "username": "admin",
                                  "password": "bench-password"})
            page = post("/admin/login/2fa", {"csrf_token": csrf(get("/admin/login/2fa")),
                                             "code": pyotp.TOTP(secret).now()})
            signed_in = time.perf_counter() - t0
            if "/admin/logout" not in page:
                sys.exit("sign-in failed")
            form = get(f"/admin/stock/{pid}/import")
            t0 = time.perf_counter()
            result = post(f"/admin/stock/{pid}/import", {"csrf_token": csrf(form), "encoding": ""}, {"file": keys})
            upload = time.perf_counter() - t0
            if not re.search(rf"{args.n:,}|{args.n}", result.replace("\u00a0", "")):
                sys.exit("the upload did not report the keys imported")
            stock = jsonlib.loads(kamengd("product", "list", "--json", env=env).stdout)["products"][0]["stock"]
            if stock != args.n:
                sys.exit(f"{stock} keys in stock after the upload, not {args.n}")
            pages = ["/admin/dashboard", "/admin/orders", "/admin/products", "/admin/stock", "/admin/audit",
                     "/admin/settings", "/admin/jobs"]
            timings = {}
            for path in pages:
                get(path)
                found = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    get(path)
                    found.append(time.perf_counter() - t0)
                timings[path] = sorted(found)
            rss = _peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=20)
    size = args.n * 26 / 1e6
    db = "SQLite" if not args.database_url else args.database_url.split(":")[0]
    print(f"machine: {machine()}")
    print(f"database: {db}; server: waitress")
    print(f"sign-in (password + TOTP, argon2): {signed_in * 1000:.0f} ms")
    print(f"upload of {args.n:,} keys ({size:.1f} MB) through /admin/stock/<id>/import: {upload:.2f} s "
          f"({args.n / upload:,.0f} keys/s); server peak RSS {rss:.0f} MB")
    for path, found in timings.items():
        print(f"GET {path}: p50 {found[len(found) // 2] * 1000:.0f} ms, "
              f"p95 {found[min(len(found) - 1, int(len(found) * .95))] * 1000:.0f} ms")


def _enrol(config_path: str, username: str) -> str:
    """Turn on 2FA for a staff account in-process; returns the TOTP secret."""
    import datetime as dt

    import pyotp
    import sqlalchemy as sa

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from kamengd.accounts import auth
    from kamengd.accounts.models import StaffUser
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.config import load_config
    from kamengd.extensions import db

    app = create_app(load_config(config_path, env={}))
    with app.app_context():
        user = db.session.scalar(sa.select(StaffUser).where(StaffUser.username == username))
        secret = auth.start_enrolment(db.session, get_vault(), user)
        past = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=5)   # keeps now's code unused
        auth.confirm_enrolment(db.session, get_vault(), user, pyotp.TOTP(secret).at(past.replace(tzinfo=dt.UTC)),
                               ip=None, now=past)
        db.session.commit()
        db.engine.dispose()
    return secret


if __name__ == "__main__":
    main()
