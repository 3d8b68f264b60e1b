"""scripts/bench checkout: kamengd's purchase path beside a bare reserve endpoint, in one run.

Same machine, same server settings (gunicorn: kamengd's default layout,
sync workers, unless --threads asks for gthread; the same workers, threads,
timeout and access log), the same client: several client processes,
each with threads on keep-alive connections, so the client is not the limit.

1. bare: a Flask endpoint that only runs the reserve transaction with the
   driver (sqlite3 / PyMySQL, no ORM): BEGIN IMMEDIATE (MySQL: SELECT … FOR
   UPDATE SKIP LOCKED); take one available key; UPDATE; COMMIT.
2. kamengd `serve --server gunicorn` with its scheduler running: order
   creations alone, then complete purchases (order → signed Epay callback →
   lookup with the keys). With --forged-flood N, the purchases once more while
   another process sends N forged callbacks (bad signatures, real-looking
   order numbers) as fast as 8 connections go: every real purchase must
   complete, and the p99 of each step is compared with the quiet run.
Then the database is checked: no key in two orders, every key handed out
once, every purchase delivered.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

MERCHANT_KEY = "bench-merchant-key-0123456789abcdef"

BARE_APP = textwrap.dedent('''
    import datetime as dt, os, threading
    from flask import Flask, jsonify
    URL = os.environ["BARE_DATABASE"]
    PRODUCT = int(os.environ["BARE_PRODUCT"])
    app = Flask("bare")
    local = threading.local()

    if URL.startswith("sqlite:"):
        import sqlite3
        def connect():
            conn = sqlite3.connect(URL.split("sqlite:///", 1)[1], timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL"); conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        def reserve(conn):
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("SELECT id FROM card_keys WHERE product_id = ? AND status = 'available' "
                                  "ORDER BY id LIMIT 1", (PRODUCT,)).fetchone()
                if row is None:
                    cur.execute("ROLLBACK"); return None
                cur.execute("UPDATE card_keys SET status = 'reserved', reserved_until = ? "
                            "WHERE id = ? AND status = 'available'", (dt.datetime.utcnow(), row[0]))
                cur.execute("COMMIT")
                return row[0]
            except BaseException:
                cur.execute("ROLLBACK"); raise
    else:
        import pymysql
        from sqlalchemy.engine import make_url
        u = make_url(URL)
        def connect():
            return pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                                   database=u.database, autocommit=False)
        def reserve(conn):
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM card_keys WHERE product_id = %s AND status = 'available' "
                            "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", (PRODUCT,))
                row = cur.fetchone()
                if row is None:
                    conn.rollback(); return None
                cur.execute("UPDATE card_keys SET status = 'reserved', reserved_until = %s "
                            "WHERE id = %s AND status = 'available'", (dt.datetime.utcnow(), row[0]))
            conn.commit()
            return row[0]

    @app.post("/reserve")
    def reserve_view():
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = connect()
        key_id = reserve(conn)
        if key_id is None:
            return jsonify({"error": {"code": "out_of_stock"}}), 409
        return jsonify({"key_id": key_id}), 201
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(port: int, path: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    sys.exit("the server did not come up")


def _show_cpu(pid):
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,time=,args="], capture_output=True, text=True).stdout
    print(out.rstrip(), file=sys.stderr)


# --- the client ---------------------------------------------------------------

def _in_threads(target, count: int) -> None:
    """Run `target` in `count` threads and wait for them all."""
    import threading

    workers = [threading.Thread(target=target) for _ in range(count)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def _client_process(base_port, plan, start_at, count, threads, results, barrier):
    """One client process: `threads` threads, each on its own keep-alive connection."""
    import http.client
    import threading

    lock = threading.Lock()
    next_index = [start_at]
    end = start_at + count
    out = {"latencies": {}, "errors": [], "keys": []}

    def take():
        with lock:
            if next_index[0] >= end:
                return None
            next_index[0] += 1
            return next_index[0] - 1

    def run():
        conn = http.client.HTTPConnection("127.0.0.1", base_port, timeout=120)

        def call(method, path, body=None, headers=None):
            """`body`: JSON to send, or bytes sent as they are (a signed request's)."""
            headers = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
            payload = body if isinstance(body, bytes) or body is None else json.dumps(body)
            for attempt in range(3):
                try:
                    t0 = time.perf_counter()
                    conn.request(method, path, body=payload, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    return resp.status, data, time.perf_counter() - t0
                except (http.client.HTTPException, ConnectionError):
                    conn.close()   # the server closed a kept-alive connection: open another
                    if attempt == 2:
                        raise
        local = {}
        while (i := take()) is not None:
            for step, status, data, took in plan(call, i):
                local.setdefault(step, []).append(took)
                if (step, status) in (("lookup", 200), ("agent order", 201)):
                    out["keys"].extend(json.loads(data).get("keys", []))
                if status >= 500 or status in (400, 404):
                    out["errors"].append(f"{step}: {status} {data[:200]!r}")
        with lock:
            for step, values in local.items():
                out["latencies"].setdefault(step, []).extend(values)

    barrier.wait()
    _in_threads(run, threads)
    results.put(out)


def _bare_plan(call, i):
    status, data, took = call("POST", "/reserve", {})
    yield "reserve", status, data, took


def _order_body(product_id, i, coupon=None):
    body = {"product_id": product_id, "quantity": 1, "email": f"b{i}@example.com", "channel": "epay"}
    if coupon:
        body["coupon"] = coupon
    return body


def _buyer(i, risk):
    """With --risk, each order from one of 1,000 addresses (the server trusts one proxy hop)."""
    return {"X-Forwarded-For": f"10.{i % 1000 // 250}.{i % 250}.7"} if risk else None


def _kamengd_order_plan(product_id, coupon=None, risk=False):
    def plan(call, i):
        status, data, took = call("POST", "/api/v1/orders", _order_body(product_id, i, coupon), _buyer(i, risk))
        yield "order", status, data, took
    return plan


def _kamengd_purchase_plan(product_id, coupon=None, risk=False):
    from kamengd.payments import epay

    def plan(call, i):
        status, data, took = call("POST", "/api/v1/orders", _order_body(product_id, i, coupon), _buyer(i, risk))
        yield "order", status, data, took
        if status != 201:
            return
        order = json.loads(data)
        params = {"pid": "1001", "trade_no": f"T{order['order_no']}", "out_trade_no": order["order_no"],
                  "type": "alipay", "name": "bench", "money": order["amount"], "trade_status": "TRADE_SUCCESS"}
        params["sign"] = hashlib.md5((epay.signing_string(params) + MERCHANT_KEY).encode()).hexdigest()
        params["sign_type"] = "MD5"
        status, data, took = call("GET", f"/pay/epay/notify?{urllib.parse.urlencode(params)}")
        yield "callback", (status if data == b"success" else 500), data, took
        status, data, took = call("GET", f"/api/v1/orders/{order['order_no']}?token={order['token']}",
                                  headers=_buyer(i, risk))
        yield "lookup", status, data, took
    return plan


def _flood(port, count, threads, done):
    """count forged callbacks over `threads` keep-alive connections; the answers counted."""
    import http.client
    import threading

    answers, lock, left = {}, threading.Lock(), [count]

    def run():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
                i = left[0]
            params = {"pid": "1001", "trade_no": f"FORGED{i}", "out_trade_no": f"20261204{i:020d}",
                      "type": "alipay", "name": "x", "money": "1.00", "trade_status": "TRADE_SUCCESS",
                      "sign": secrets.token_hex(16), "sign_type": "MD5"}
            try:
                conn.request("GET", f"/pay/epay/notify?{urllib.parse.urlencode(params)}")
                resp = conn.getresponse()
                body = resp.read()
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                continue
            key = f"{resp.status} {body.decode(errors='replace')[:20]}"
            with lock:
                answers[key] = answers.get(key, 0) + 1
    _in_threads(run, threads)
    done.put(answers)


def drive(port, plan, n, clients, processes) -> dict:
    """n operations by `clients` client threads spread over `processes` processes."""
    ctx = mp.get_context("fork")
    results, barrier = ctx.Queue(), ctx.Barrier(processes + 1)
    per = [n // processes + (1 if p < n % processes else 0) for p in range(processes)]
    threads = [clients // processes + (1 if p < clients % processes else 0) for p in range(processes)]
    procs, start_at = [], 0
    for p in range(processes):
        procs.append(ctx.Process(target=_client_process,
                                 args=(port, plan, start_at, per[p], threads[p], results, barrier)))
        start_at += per[p]
    for proc in procs:
        proc.start()
    barrier.wait()
    started = time.perf_counter()
    outs = [results.get() for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    merged = {"latencies": {}, "errors": [], "keys": [], "elapsed": elapsed, "n": n}
    for out in outs:
        for step, values in out["latencies"].items():
            merged["latencies"].setdefault(step, []).extend(values)
        merged["errors"] += out["errors"]
        merged["keys"] += out["keys"]
    return merged


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else float("nan")


def steps_line(result) -> str:
    return "; ".join(f"{step} p50 {pct(v, .5):.1f} ms / p99 {pct(v, .99):.1f} ms"
                     for step, v in result["latencies"].items())


# --- the run ------------------------------------------------------------------

def bench_checkout(args, *, kamengd, install, machine) -> None:
    with tempfile.TemporaryDirectory(prefix="kamengd-bench-") as tmp:
        work = Path(tmp)
        env = install(work, args.database_url)
        env["KAMENGD_SERVER_WORKERS"] = str(args.workers)
        env["KAMENGD_SERVER_GUNICORN_THREADS"] = str(args.threads)
        config_path = env["KAMENGD_CONFIG"]
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from kamengd.config import load_config

        database_url = load_config(config_path, env={}).database_url

        def product(name):
            return json.loads(kamengd("product", "create", "--name", name, "--price", "1.00", "--json",
                                      env=env).stdout)["id"]

        def stock(product_id, count):
            keys = "\n".join(f"{name}-{secrets.token_hex(10)}" for name in ["K"] * count).encode()
            subprocess.run([sys.executable, "-m", "kamengd", "keys", "import", "--product", str(product_id), "-"],
                           input=keys, env=env, check=True, capture_output=True)

        bare_product, shop_product = product("bare"), product("bench")
        stock(bare_product, args.n)
        stock(shop_product, (3 if args.forged_flood else 2) * args.n)
        r = kamengd("channel", "add", "--type", "epay", "--code", "epay", "--option", "gateway=http://127.0.0.1:9",
                    "--option", "pid=1001", "--option", f"key={MERCHANT_KEY}", env=env)
        if r.returncode:
            sys.exit(r.stderr)
        coupon = None
        if args.coupons:   # every order takes one use of one coupon: its row is claimed by each order
            coupon = "BENCH10"
            r = kamengd("coupon", "add", "--code", coupon, "--percent-off", "10", env=env)
            if r.returncode:
                sys.exit(r.stderr)
        if args.risk:   # rules as a merchant would set them, none of which these buyers trip
            env["KAMENGD_SERVER_PROXY_COUNT"] = "1"
            for rule in (["--kind", "ip_velocity", "--action", "refuse", "--limit", "20", "--minutes", "10"],
                         ["--kind", "email_velocity", "--action", "captcha", "--limit", "10", "--minutes", "60"],
                         ["--kind", "device_velocity", "--action", "refuse", "--limit", "20", "--minutes", "10"],
                         ["--kind", "ip_list", "--action", "refuse", "--ranges", "192.0.2.0/24,2001:db8::/32"],
                         ["--kind", "email_list", "--action", "refuse", "--domains", "spam.example,mailinator.com"],
                         ["--kind", "amount_anomaly", "--action", "review", "--factor", "10", "--min-orders", "20"],
                         ["--kind", "failed_lookups", "--action", "captcha", "--limit", "20", "--minutes", "10"]):
                r = kamengd("risk", "rule", "add", "--name", rule[1], *rule, env=env)
                if r.returncode:
                    sys.exit(r.stderr)
        gunicorn_log = ["--access-logfile", "-", "--access-logformat", '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss']

        # 1. bare
        (work / "bare_app.py").write_text(BARE_APP)
        port = _free_port()
        bare_env = {**env, "BARE_DATABASE": database_url, "BARE_PRODUCT": str(bare_product)}
        bare = subprocess.Popen([sys.executable, "-m", "gunicorn", "--chdir", str(work), "-b", f"127.0.0.1:{port}",
                                 "-w", str(args.workers), "--threads", str(args.threads),
                                 "-k", "gthread" if args.threads > 1 else "sync", "--timeout", "120",
                                 *gunicorn_log, "bare_app:app"], env=bare_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_up(port, "/nothing", bare)
            bare_result = drive(port, _bare_plan, args.n, args.clients, args.processes)
            if os.environ.get("BENCH_SHOW_CPU"):
                _show_cpu(bare.pid)
        finally:
            bare.terminate()
            bare.wait(timeout=30)

        # 2. kamengd, the scheduler running
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "kamengd", "serve", "--bind", f"127.0.0.1:{port}",
                                   "--server", args.server], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if args.show_errors else
                                  subprocess.DEVNULL)
        try:
            _wait_up(port, "/healthz", server)
            orders = drive(port, _kamengd_order_plan(shop_product, coupon, args.risk), args.n, args.clients, args.processes)
            if os.environ.get("BENCH_SHOW_CPU"):
                _show_cpu(server.pid)
            purchases = drive(port, _kamengd_purchase_plan(shop_product, coupon, args.risk), args.n, args.clients, args.processes)
            flooded = flood_answers = None
            if args.forged_flood:
                ctx = mp.get_context("fork")
                done = ctx.Queue()
                flooder = ctx.Process(target=_flood, args=(port, args.forged_flood, 8, done))
                flooder.start()
                flooded = drive(port, _kamengd_purchase_plan(shop_product, coupon, args.risk), args.n, args.clients, args.processes)
                flood_answers = done.get()
                flooder.join()
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read())
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

        problems = check_database(database_url, shop_product, purchases, flooded)
        bare_rate = args.n / bare_result["elapsed"]
        order_rate = args.n / orders["elapsed"]
        purchase_rate = args.n / purchases["elapsed"]
        db = "SQLite" if database_url.startswith("sqlite") else "MariaDB/MySQL"
        print(f"machine: {machine()}")
        kind = "gthread" if args.threads > 1 else "sync"
        print(f"database: {db}; server: gunicorn {kind}, {args.workers} workers x {args.threads} threads, "
              f"access log on; kamengd with its scheduler (leader: {health['scheduler']['leader']})")
        if coupon:
            print(f"every order with coupon {coupon} (10% off, no limit on uses)")
        if args.risk:
            print("risk rules on: velocity per address (20/10 min), e-mail (10/h) and device, listed ranges and "
                  "domains, amounts above 10x the usual, failed lookups; 1,000 buyer addresses")
        print(f"client: {args.clients} clients in {args.processes} processes, keep-alive; {args.n} operations a phase")
        print(f"bare reserve: {bare_rate:,.0f}/s; {steps_line(bare_result)}")
        print(f"kamengd order creation: {order_rate:,.0f}/s = {order_rate / bare_rate:.2f} x bare; "
              f"{steps_line(orders)}")
        print(f"kamengd complete purchases: {purchase_rate:,.0f}/s = {purchase_rate / bare_rate:.2f} x bare; "
              f"{steps_line(purchases)}")
        if flooded is not None:
            rate = args.n / flooded["elapsed"]
            print(f"kamengd purchases under a flood of {args.forged_flood} forged callbacks: {rate:,.0f}/s; "
                  f"{steps_line(flooded)}")
            print("  p99 under the flood / quiet: " + "; ".join(
                f"{step} {pct(flooded['latencies'][step], .99) / pct(purchases['latencies'][step], .99):.2f}x"
                for step in flooded["latencies"]))
            print(f"  the forged callbacks were answered: {flood_answers}")
        errors = bare_result["errors"] + orders["errors"] + purchases["errors"] + (flooded or {}).get("errors", [])
        print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
        print("oversell check: " + ("OK, every key in at most one order, every purchase delivered once"
                                    if not problems else "FAILED: " + "; ".join(problems)))
        if problems or errors:
            sys.exit(1)


def check_database(url: str, product_id: int, purchases: dict, flooded: dict | None = None) -> list[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    problems = []
    with engine.connect() as conn:
        delivered = conn.execute(sa.text("SELECT count(*), coalesce(sum(quantity), 0) FROM orders "
                                         "WHERE product_id = :p AND status = 'delivered'"), {"p": product_id}).one()
        pending = conn.execute(sa.text("SELECT coalesce(sum(quantity), 0) FROM orders "
                                       "WHERE product_id = :p AND status = 'pending'"), {"p": product_id}).scalar()
        sold = conn.execute(sa.text("SELECT count(*) FROM card_keys WHERE product_id = :p AND status = 'sold'"),
                            {"p": product_id}).scalar()
        reserved = conn.execute(sa.text("SELECT count(*) FROM card_keys WHERE product_id = :p "
                                        "AND status = 'reserved'"), {"p": product_id}).scalar()
        mismatched = conn.execute(sa.text(
            "SELECT count(*) FROM orders o WHERE o.product_id = :p AND o.status IN ('pending', 'delivered') AND "
            "o.quantity != (SELECT count(*) FROM card_keys k WHERE k.order_id = o.id)"), {"p": product_id}).scalar()
    engine.dispose()
    if sold != delivered[1]:
        problems.append(f"{sold} keys sold for {delivered[1]} delivered")
    if reserved != pending:
        problems.append(f"{reserved} keys reserved for {pending} pending")
    if mismatched:
        problems.append(f"{mismatched} orders whose key count is not their quantity")
    bought = purchases["n"] + (flooded["n"] if flooded else 0)
    if delivered[0] != bought:
        problems.append(f"{delivered[0]} orders delivered of {bought} purchases")
    keys = purchases["keys"] + (flooded["keys"] if flooded else [])
    if len(keys) != len(set(keys)) or len(keys) != bought:
        problems.append(f"{len(keys)} keys handed out, {len(set(keys))} distinct, for {bought} purchases")
    return problems
