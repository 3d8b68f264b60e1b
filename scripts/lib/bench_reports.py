"""`scripts/bench reports`: a shop with N orders over a year, and how long the staff's figures take.

W7's bench (issue 20): the dashboard (every figure on it, on a fresh reader as a request has) and
each report over a year, timed in-process against the database (the median of several runs, after
one to warm the caches); then every order exported to CSV and XLSX by `kamengd report orders` in a
process of its own (its time and peak RSS). W7's targets: each figure under 300 ms at 1,000,000
orders on SQLite and MariaDB; an export of a million rows under 60 s in under 200 MB.

The seed writes rows directly (bulk INSERTs through the models' tables, 20,000 a statement batch):
orders spread over the 365 days before now with more in the evening, in time order, 85 % delivered,
8 % expired, 3 % refunded, 1 % cancelled, the rest pending, paid or held: those only in the last
day (a running shop expires, delivers and settles them) but for a few held orders left waiting;
one in twenty with a coupon, one in ten sold through an agent's sub-station; 50 products in 5
categories; 100,000 buyers (many buy again); a payment (with its fee) per paid order. Then the
summaries are written as the summarise_sales job would catch up after an upgrade. `--keep DIR`
keeps the shop; a second run with the same DIR times it again without seeding.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STATUSES = (("delivered", 85), ("expired", 8), ("refunded", 3), ("pending", 1), ("paid", 1), ("held", 1),
            ("cancelled", 1))
CHUNK = 20_000


def _weights():
    names, weights = zip(*STATUSES)
    return list(names), list(weights)


def seed(session, n: int, now: dt.datetime, rng: random.Random) -> dict:
    """N orders over the year before `now`; returns what was made."""
    import sqlalchemy as sa

    from kamengd.catalog.models import Category, Product
    from kamengd.orders.models import Order
    from kamengd.payments.models import Payment, PaymentChannel

    categories = []
    for i in range(5):
        c = Category(name=f"分类 {i}", sort_order=i)
        session.add(c)
        session.flush()
        categories.append(c.id)
    products = []
    for i in range(50):
        price = rng.choice((100, 500, 990, 1990, 4990, 9900))
        p = Product(name=f"商品 {i:02d}", category_id=categories[i % 5], price_cents=price,
                    cost_price_cents=price * rng.choice((50, 60, 70, 80)) // 100, currency="CNY", description="",
                    delivery_mode="auto", is_active=True, low_stock_threshold=10)
        session.add(p)
        session.flush()
        products.append((p.id, price))
    channel = session.scalar(sa.select(PaymentChannel.id).limit(1))
    session.commit()
    names, weights = _weights()
    orders, payments = Order.__table__, Payment.__table__
    token = hashlib.sha256(b"bench").digest()
    first_id = (session.scalar(sa.select(sa.func.max(Order.id))) or 0) + 1
    session.commit()
    # A day of the year, then an hour weighted to the evening; in time order, as a shop writes
    # them (ids follow time: a range of days is a run of neighbouring rows, not rows all over).
    times = []
    for _ in range(n):
        created = now - dt.timedelta(days=rng.random() * 365)
        times.append(min(now, created.replace(hour=min(23, max(0, int(rng.gauss(14, 5)))),
                                              minute=rng.randrange(60))))
    times.sort()
    made = 0
    while made < n:
        rows, pays = [], []
        for i in range(min(CHUNK, n - made)):
            oid = first_id + made + i
            product_id, price = products[min(int(rng.paretovariate(1.2)) - 1, len(products) - 1)]
            quantity = 1 if rng.random() < 0.85 else rng.randint(2, 5)
            created = times[made + i]
            status = rng.choices(names, weights)[0]
            if now - created > dt.timedelta(days=1):
                # A running shop: unpaid orders expire within minutes, paid ones are delivered at
                # once, staff settle held ones within a day (one in two hundred is left waiting).
                if status == "pending":
                    status = "expired"
                elif status == "paid" or (status == "held" and rng.random() > 0.005):
                    status = "delivered"
            paid = created + dt.timedelta(seconds=rng.randint(20, 600)) \
                if status in ("delivered", "refunded", "paid", "held") else None
            refunded = min(now, paid + dt.timedelta(days=rng.random() * 10)) if status == "refunded" else None
            discount = price // 10 if rng.random() < 0.05 else 0   # a coupon on one order in twenty
            amount = price * quantity - discount
            email = f"buyer{int(rng.paretovariate(0.6)) % 100_000}@example.com"
            rows.append({"id": oid, "order_no": f"B{oid:019d}", "product_id": product_id, "channel_id": channel,
                         "quantity": quantity, "unit_price_cents": price, "amount_cents": amount, "currency": "CNY",
                         "email": email, "email_folded": email, "status": status, "token_hash": token, "created_at": created, "updated_at": paid or created,
                         "expires_at": created + dt.timedelta(minutes=15), "paid_at": paid,
                         "delivered_at": paid if status in ("delivered", "refunded") else None,
                         "refunded_at": refunded, "coupon_id": 1 + oid % 3 if discount else None,
                         # one order in ten sold through one of 20 agents' sub-stations
                         "seller_agent_id": 1 + oid % 20 if oid % 10 == 0 else None,
                         "delivery_attempts": 0, "discount_cents": discount, "coupon_held": False, "points_used": 0,
                         "points_discount_cents": 0, "points_held": False, "risk_review": False})
            if paid is not None and channel is not None:
                pays.append({"order_id": oid, "channel_id": channel, "trade_no": f"T{oid}", "amount_cents": amount,
                             "status": "refunded" if status == "refunded" else "received", "created_at": paid,
                             "fee_cents": amount * 6 // 1000})
        session.execute(orders.insert(), rows)
        if pays:
            session.execute(payments.insert(), pays)
        session.commit()
        made += len(rows)
    return {"products": len(products), "orders": made}


def _peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0)
    except OSError:   # (it has just ended)
        return 0


def timed(fn, repeat: int = 5) -> tuple[float, float]:
    """(median ms, worst ms) of `repeat` runs after one to warm the caches."""
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs), max(runs)


def bench_reports(args, *, install, machine) -> None:
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.orders import staff as order_staff
    from kamengd.orders.models import Order
    from kamengd.payments.settlement import day_bounds
    from kamengd.reports import figures, shop, summary
    from kamengd.tickets import services as tickets

    keep = Path(args.keep) if args.keep else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory(prefix="kamengd-bench-")) as tmp:
        marker = Path(tmp) / "bench-config"
        reuse = marker.exists()
        if reuse:   # --keep: the shop seeded by an earlier run, its figures timed again
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")},
                   "KAMENGD_CONFIG": marker.read_text().strip()}
        else:
            env = install(Path(tmp), args.database_url)
            from bench import kamengd   # (scripts/lib/bench.py: the CLI in a process)
            channel = kamengd("channel", "add", "--type", "sandbox", "--code", "sb", env=env)
            if channel.returncode:
                raise SystemExit(f"channel add failed: {channel.stderr.strip()}")
            marker.write_text(env["KAMENGD_CONFIG"])
        config = load_config(env["KAMENGD_CONFIG"], env={})
        app = create_app(config)
        tz = config.site.timezone
        with app.app_context():
            print(f"{machine()}; {'SQLite' if not config.database.url.startswith('mysql') else 'MariaDB'}")
            if reuse:
                now = db.session.scalar(sa.select(sa.func.max(Order.created_at)))
                print(f"reusing the shop in {tmp} ({db.session.scalar(sa.select(sa.func.count()).select_from(Order)):,}"
                      " orders)")
                t0 = time.perf_counter()
                made = summary.summarise(db.session, tz, now=now, max_days=1000)   # an interrupted run's days
                if made["days"]:
                    print(f"summarised the {made['days']} days left in {time.perf_counter() - t0:.1f} s")
            else:
                now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
                t0 = time.perf_counter()
                made = seed(db.session, args.n, now, random.Random(args.seed))
                took = time.perf_counter() - t0
                db.session.remove()
                print(f"seeded {made['orders']:,} orders over a year in {took:.0f} s ({made['orders'] / took:,.0f}/s)")
                t0 = time.perf_counter()
                made = summary.rebuild(db.session, tz, now=now)
                took = time.perf_counter() - t0
                print(f"summarised {made['days']} days ({made['buyers']:,} buyer-days) in {took:.1f} s "
                      f"(the summarise_sales job's catch-up; afterwards it writes one day a night)")
            today = summary.local_day(now, tz)
            year = today - dt.timedelta(days=364)
            month_start = day_bounds(today - dt.timedelta(days=29), tz)[0]   # as the dashboard asks

            def dashboard():   # what the dashboard view reads, on a fresh reader (a request's)
                reader = figures.Reader(db.session, tz, now)
                for n in (1, 7, 30):
                    figures.totals(reader, today - dt.timedelta(days=n - 1), today)
                figures.daily(reader, today - dt.timedelta(days=29), today)
                figures.profit(reader, today - dt.timedelta(days=29), today)
                shop.orders_needing_attention(db.session)
                shop.orders_by_status(db.session, since=month_start)
                shop.low_stock_products(db.session)
                shop.waiting_for_stock(db.session)
                shop.withdrawals_requested(db.session)
                tickets.counts(db.session)

            def report(fn, *args):
                return lambda: fn(figures.Reader(db.session, tz, now), year, today, *args)

            figures_ = {
                "dashboard (every figure on it)": dashboard,
                "profit by product, a year": report(figures.profit),
                "profit by category, a year": report(figures.profit, "category"),
                "channel conversion, a year": report(figures.channels),
                "hour x weekday heatmap, a year": report(figures.heatmap),
                "repurchase and cohorts, a year": report(figures.repurchase),
                "agents, a year": report(figures.agents),
                "coupons, a year": report(figures.coupons),
                "risk outcomes, a year": report(figures.risk),
                "sales per day, a year": report(figures.daily),
                "orders needing a person": lambda: shop.orders_needing_attention(db.session),
                "orders by status, 30 days": lambda: shop.orders_by_status(db.session, since=month_start),
                "orders list, first page (newest)": lambda: order_staff.search_orders(
                    db.session, order_staff.OrderSearch(), page=1, page_size=50),
            }
            for name, fn in figures_.items():
                median, worst = timed(fn, args.repeat)
                db.session.rollback()
                mark = "" if median < 300 else "   (over W7's 300 ms)"
                print(f"  {name:<36} {median:9.1f} ms median, {worst:9.1f} ms worst{mark}")
            db.session.remove()
        # The exports: every order of the year through `kamengd report orders`, the path the
        # panel's background lists take too (exports.orders, keyset pages, a streaming writer),
        # in a process of its own so its peak RSS is the export's alone.
        if args.export:
            first = (today - dt.timedelta(days=364)).isoformat()
            for fmt in args.formats.split(","):
                out = Path(tmp) / f"orders.{fmt}"
                out.unlink(missing_ok=True)
                argv = [sys.executable, "-m", "kamengd", "report", "orders", "--from", first, "--to", today.isoformat(),
                        "--output", str(out), "--json"]
                t0 = time.perf_counter()
                proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                # Its peak RSS as the kernel keeps it for the process's own memory (VmHWM): its
                # rusage would count this big process's pages, shared with it at the fork.
                peak = 0
                while proc.poll() is None:
                    peak = max(peak, _peak_kib(proc.pid))
                    time.sleep(0.1)
                took = time.perf_counter() - t0
                answer, error = proc.communicate()
                if proc.returncode:
                    raise SystemExit(f"kamengd report orders failed: {error.decode().strip()}")
                rows = json.loads(answer)["rows"]
                mark = "" if took < 60 and peak < 200 * 1024 else "   (over W7's 60 s / 200 MB)"
                print(f"  export of every order, {fmt.upper()}: {rows:,} rows in {took:.1f} s ({rows / took:,.0f} rows/s), "
                      f"{out.stat().st_size / 2**20:.0f} MiB, peak RSS {peak / 1024:.0f} MB{mark}")
                out.unlink()
    os.environ.pop("KAMENGD_CONFIG", None)
