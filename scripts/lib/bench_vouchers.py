"""scripts/bench vouchers: redemptions (核销) per second at 16 verifier terminals.

A shop installed from scratch (SQLite, or --database-url) served by `kamengd serve --server
gunicorn` with its scheduler, a store, 16 verifier accounts bound to it, each signed in through
the panel's real sign-in form (its own session and CSRF token), each a terminal on its own
keep-alive connection, spread over client processes. The codes are a batch issued with
`kamengd voucher batch` (single use).

1. Redemptions: every code redeemed once (`POST /admin/terminal/redeem`, JSON), codes spread over
   the terminals: redemptions/s and latencies.
2. The race: every terminal tries every code of a second set, each in its own order: exactly one
   redemption per code must succeed, the others are refused as used up.
3. A stored value: every terminal takes 1.00 at a time from one card of --value until it is
   refused: exactly the value is taken, never below zero.
The database is checked after: one redemption per single-use code, none twice.
"""
from __future__ import annotations

import csv
import http.client
import http.cookiejar
import json
import multiprocessing as mp
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench_checkout import _free_port, _wait_up, pct   # the same server start and percentiles

PASSWORD = "bench-verifier-password"


def sign_in(port: int, username: str) -> tuple[str, str]:
    """A verifier through the panel's sign-in form: (its cookie header, its CSRF token)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{port}"

    def csrf(html: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    page = opener.open(base + "/admin/login", timeout=60).read().decode()
    body = urllib.parse.urlencode({"csrf_token": csrf(page), "username": username, "password": PASSWORD}).encode()
    opener.open(urllib.request.Request(base + "/admin/login", data=body), timeout=60).read()
    terminal = opener.open(base + "/admin/terminal", timeout=60)
    if not terminal.geturl().endswith("/admin/terminal"):
        sys.exit(f"{username} did not land on the terminal: {terminal.geturl()}")
    token = csrf(terminal.read().decode())
    return "; ".join(f"{c.name}={c.value}" for c in jar), token


def _terminal(port, session, jobs, out):
    """One terminal: its keep-alive connection, its session; redeems what `jobs` hands it."""
    cookie, token = session
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json", "Accept": "application/json", "Cookie": cookie,
               "X-CSRFToken": token}
    for code, amount in jobs:
        body = json.dumps({"code": code, **({"amount": amount} if amount else {})})
        for attempt in range(3):
            try:
                t0 = time.perf_counter()
                conn.request("POST", "/admin/terminal/redeem", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                took = time.perf_counter() - t0
                break
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                if attempt == 2:
                    raise
        out["latencies"].append(took)
        if resp.status == 200:
            out["redeemed"].append(code)
        elif resp.status == 409:
            out["refused"].append(json.loads(data).get("refusal"))
            if amount is not None and json.loads(data).get("refusal") in ("used_up", "not_enough"):
                return   # the card is empty: this till stops
        else:
            out["errors"].append(f"{resp.status} {data[:200]!r}")


def _client(port, sessions, plans, barrier, results):
    outs = [{"latencies": [], "redeemed": [], "refused": [], "errors": []} for _ in sessions]
    threads = [threading.Thread(target=_terminal, args=(port, s, plan, out))
               for s, plan, out in zip(sessions, plans, outs)]
    barrier.wait()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = {"latencies": [], "redeemed": [], "refused": [], "errors": []}
    for out in outs:
        for k in merged:
            merged[k] += out[k]
    results.put(merged)


def drive(port, sessions, plans, processes) -> dict:
    """Each terminal (a session) runs its plan; terminals spread over client processes."""
    ctx = mp.get_context("fork")
    groups = [g for g in (list(range(p, len(sessions), processes)) for p in range(processes)) if g]
    results, barrier = ctx.Queue(), ctx.Barrier(len(groups) + 1)
    procs = [ctx.Process(target=_client, args=(port, [sessions[i] for i in g], [plans[i] for i in g], barrier,
                                               results)) for g in groups]
    for proc in procs:
        proc.start()
    barrier.wait()
    started = time.perf_counter()
    outs = [results.get() for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    merged = {"latencies": [], "redeemed": [], "refused": [], "errors": [], "elapsed": elapsed}
    for out in outs:
        for k in ("latencies", "redeemed", "refused", "errors"):
            merged[k] += out[k]
    return merged


def bench_vouchers(args, *, kamengd, install, machine) -> None:
    with tempfile.TemporaryDirectory(prefix="kamengd-bench-") as tmp:
        work = Path(tmp)
        env = install(work, args.database_url)

        def run(*argv) -> str:
            r = kamengd(*argv, env=env)
            if r.returncode:
                sys.exit(f"kamengd {' '.join(argv)}: {r.stderr.strip()}")
            return r.stdout

        single = json.loads(run("product", "create", "--name", "bench coffee", "--price", "15.00", "--json"))["id"]
        card = json.loads(run("product", "create", "--name", "bench card", "--price", "100.00", "--json"))["id"]
        run("voucher", "terms", str(single), "--kind", "uses", "--uses", "1", "--entitlement", "一杯咖啡")
        run("voucher", "terms", str(card), "--kind", "value", "--value", args.value)
        store = json.loads(run("store", "add", "--name", "Bench store", "--json"))["id"]
        codes_file, card_file = work / "codes.csv", work / "card.csv"
        run("voucher", "batch", str(single), "--count", str(args.n + args.race), "--reason", "bench",
            "--output", str(codes_file))
        run("voucher", "batch", str(card), "--count", "1", "--reason", "bench", "--output", str(card_file))
        with open(codes_file, encoding="utf-8-sig") as fh:
            codes = [row["code"] for row in csv.DictReader(fh)]
        with open(card_file, encoding="utf-8-sig") as fh:
            [card_code] = [row["code"] for row in csv.DictReader(fh)]
        (work / "pw").write_text(PASSWORD + "\n")
        names = [f"till{i:02d}" for i in range(args.terminals)]
        for name in names:
            run("user", "create", "--username", name, "--role", "verifier", "--password-file", str(work / "pw"))
            run("store", "bind", str(store), name)

        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "kamengd", "serve", "--bind", f"127.0.0.1:{port}",
                                   "--server", "gunicorn"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            _wait_up(port, "/healthz", server)
            sessions = [sign_in(port, name) for name in names]
            first, race = codes[:args.n], codes[args.n:]
            plans = [[(c, None) for c in first[i::args.terminals]] for i in range(args.terminals)]
            redeemed = drive(port, sessions, plans, args.processes)
            race_plans = []
            for _ in range(args.terminals):
                mine = list(race)
                random.shuffle(mine)
                race_plans.append([(c, None) for c in mine])
            raced = drive(port, sessions, race_plans, args.processes)
            taken = drive(port, sessions, [[(card_code, "1.00")] * 100000 for _ in range(args.terminals)],
                          args.processes)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        problems = []
        if len(redeemed["redeemed"]) != args.n:
            problems.append(f"{len(redeemed['redeemed'])} of {args.n} distinct codes redeemed")
        if sorted(raced["redeemed"]) != sorted(race):
            problems.append(f"the race redeemed {len(raced['redeemed'])} times for {len(race)} codes "
                            f"({len(set(raced['redeemed']))} distinct)")
        value_cents = int(round(float(args.value) * 100))
        if len(taken["redeemed"]) != value_cents // 100:
            problems.append(f"{len(taken['redeemed'])} parts of 1.00 taken from a card of {args.value}")
        seen = json.loads(run("voucher", "check", card_code, "--store", str(store)))
        if seen.get("value_left") != f"0.{value_cents % 100:02d}":
            problems.append(f"the card has {seen.get('value_left')} left")
        db = "SQLite" if not args.database_url else "MariaDB/MySQL"
        rate = args.n / redeemed["elapsed"]
        print(f"machine: {machine()}")
        print(f"database: {db}; server: gunicorn, kamengd's default workers, its scheduler running")
        print(f"terminals: {args.terminals} verifiers signed in through the panel, in {args.processes} client "
              f"processes, keep-alive")
        print(f"redemptions: {rate:,.0f}/s ({args.n} single-use codes, each once); p50 {pct(redeemed['latencies'], .5):.0f} "
              f"ms, p95 {pct(redeemed['latencies'], .95):.0f} ms, p99 {pct(redeemed['latencies'], .99):.0f} ms")
        print(f"race: {args.terminals} terminals x {len(race)} codes = {len(raced['latencies'])} attempts in "
              f"{raced['elapsed']:.1f} s ({len(raced['latencies']) / raced['elapsed']:,.0f}/s): "
              f"{len(raced['redeemed'])} redeemed, {len(raced['refused'])} refused")
        print(f"stored value: {args.terminals} terminals taking 1.00 from one card of {args.value}: "
              f"{len(taken['redeemed'])} taken, {len(taken['latencies']) / taken['elapsed']:,.0f} attempts/s")
        errors = redeemed["errors"] + raced["errors"] + taken["errors"]
        print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
        print("check: " + ("OK, every code redeemed at most once, the card never below zero" if not problems
                           else "FAILED: " + "; ".join(problems)))
        if problems or errors:
            sys.exit(1)


if __name__ == "__main__":   # scripts/bench vouchers
    sys.exit("run through scripts/bench vouchers")
