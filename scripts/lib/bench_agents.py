"""scripts/bench agents: orders paid from balances through the signed agent API, beside
the buyers' order creation of the same run (W2's figure: at least 0.5x). scripts/bench api
runs the same and judges the ratio at 32 clients against W3's target (at least 0.4x)."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_checkout import _free_port, _kamengd_order_plan, _wait_up, check_database, drive, steps_line

PRICE_CENTS = 100


def _agents(config_path: str, count: int, orders_each: int) -> list[dict]:
    """`count` agents, each with a key and a balance for `orders_each` orders (in-process, committed)."""
    from kamengd.agents import services as agents
    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.context import get_vault
    from kamengd.extensions import db

    app = create_app(load_config(config_path))
    made = []
    with app.app_context():
        level, _ = agents.set_level(db.session, name="bench", discount="10", actor="bench")
        for i in range(count):
            agent = agents.create_agent(db.session, username=f"bench-{i:02d}", level=level.name, actor="bench")
            key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="bench")
            agents.credit_balance(db.session, agent, PRICE_CENTS * (orders_each + 1), reason="bench", actor="bench")
            made.append({"username": agent.username, "key_id": key_id, "secret": secret})
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return made


def _agent_order_plan(product_id: int, agents: list[dict]):
    path = "/api/v1/agent/orders"

    def plan(call, i):
        agent = agents[i % len(agents)]
        body = json.dumps({"product_id": product_id, "quantity": 1}).encode()
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        text = "\n".join(["POST", path, timestamp, nonce, hashlib.sha256(body).hexdigest()])
        headers = {"X-Kamengd-Key": agent["key_id"], "X-Kamengd-Timestamp": timestamp, "X-Kamengd-Nonce": nonce,
                   "X-Kamengd-Signature": hmac.new(agent["secret"].encode(), text.encode(), hashlib.sha256).hexdigest(),
                   "Idempotency-Key": f"bench-{i}"}
        status, data, took = call("POST", path, body, headers)
        if status == 201 and json.loads(data)["status"] == "delivered":
            yield "agent order", status, data, took
        else:   # anything but a delivered order is a failure of the run
            yield "agent order", 500, data, took
    return plan


def bench_agents(args, *, kamengd, install, machine, target: float | None = None) -> None:
    """With `target`: the ratio of agent orders to buyers' orders is judged against it (a
    miss exits non-zero, as errors do)."""
    with tempfile.TemporaryDirectory(prefix="kamengd-bench-") as tmp:
        work = Path(tmp)
        env = install(work, args.database_url)
        env["KAMENGD_SERVER_WORKERS"] = str(args.workers)
        config_path = env["KAMENGD_CONFIG"]
        from kamengd.config import load_config

        database_url = load_config(config_path, env={}).database_url

        def product(name):
            return json.loads(kamengd("product", "create", "--name", name, "--price", "1.00", "--json",
                                      env=env).stdout)["id"]

        def stock(product_id, count):
            keys = "\n".join(f"K-{secrets.token_hex(10)}" for _ in range(count)).encode()
            subprocess.run([sys.executable, "-m", "kamengd", "keys", "import", "--product", str(product_id), "-"],
                           input=keys, env=env, check=True, capture_output=True)

        buyers_product, agents_product = product("buyers"), product("agents")
        stock(buyers_product, args.n)
        stock(agents_product, args.n)
        r = kamengd("channel", "add", "--type", "epay", "--code", "epay", "--option", "gateway=http://127.0.0.1:9",
                    "--option", "pid=1001", "--option", "key=bench-merchant-key-0123456789", env=env)
        if r.returncode:
            sys.exit(r.stderr)
        agents = _agents(config_path, args.agents, -(-args.n // args.agents))

        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "kamengd", "serve", "--bind", f"127.0.0.1:{port}",
                                   "--server", args.server], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            _wait_up(port, "/healthz", server)
            orders = drive(port, _kamengd_order_plan(buyers_product), args.n, args.clients, args.processes)
            agent_orders = drive(port, _agent_order_plan(agents_product, agents), args.n, args.clients,
                                 args.processes)
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read())
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

        verified = kamengd("ledger", "verify", "--json", env=env)
        order_rate = args.n / orders["elapsed"]
        agent_rate = args.n / agent_orders["elapsed"]
        db = "SQLite" if database_url.startswith("sqlite") else "MariaDB/MySQL"
        print(f"machine: {machine()}")
        print(f"database: {db}; server: {args.server} ({args.workers} workers for gunicorn), kamengd with its "
              f"scheduler (leader: {health['scheduler']['leader']})")
        print(f"client: {args.clients} clients in {args.processes} processes, keep-alive; {args.n} orders a phase; "
              f"{len(agents)} agents")
        print(f"buyers' order creation (POST /api/v1/orders): {order_rate:,.0f}/s; {steps_line(orders)}")
        print(f"agents' orders paid from the balance and delivered (POST /api/v1/agent/orders): {agent_rate:,.0f}/s "
              f"= {agent_rate / order_rate:.2f} x order creation; {steps_line(agent_orders)}")
        errors = orders["errors"] + agent_orders["errors"]
        print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
        problems = check_database(database_url, agents_product, agent_orders)
        ledger_ok = verified.returncode == 0
        print("ledger verify: " + ("OK" if ledger_ok else verified.stderr.strip()))
        print("oversell check: " + ("OK" if not problems else "FAILED: " + "; ".join(problems)))
        missed = target is not None and agent_rate / order_rate < target
        if target is not None:
            print(f"ratio: {agent_rate / order_rate:.2f} signed agent orders per buyer order at {args.clients} "
                  f"clients (target ≥ {target}): {'NOT met' if missed else 'met'}")
        if errors or problems or not ledger_ok or missed:
            sys.exit(1)

