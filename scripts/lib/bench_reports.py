"""`scripts/bench reports`: a shop with N orders over a year, and how long the staff's figures take.

W7's bench (issue 20), first part: the seed and the figures the panel has today (the dashboard's
sales per day over 7 and 30 days, orders by status, orders needing a person, low stock, tickets
waiting) and the orders export's pages, each timed in-process against the database (the median of
several runs, after one to warm the caches). W7's reports are added here as they are built; its
target is each under 300 ms at 1,000,000 orders on SQLite and MariaDB.

The seed writes rows directly (bulk INSERTs through the models' tables, 20,000 a statement batch):
orders spread over the 365 days before now with more in the evening, 85 % delivered, 8 % expired,
3 % refunded, the rest pending, paid, held or cancelled; 50 products in 5 categories; 100,000 buyers
(many buy again); a payment per paid order.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import statistics
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
    made = 0
    while made < n:
        rows, pays = [], []
        for i in range(min(CHUNK, n - made)):
            oid = first_id + made + i
            product_id, price = products[min(int(rng.paretovariate(1.2)) - 1, len(products) - 1)]
            quantity = 1 if rng.random() < 0.85 else rng.randint(2, 5)
            # a day of the year, then an hour weighted to the evening
            created = now - dt.timedelta(days=rng.random() * 365)
            created = created.replace(hour=min(23, max(0, int(rng.gauss(14, 5)))), minute=rng.randrange(60))
            status = rng.choices(names, weights)[0]
            paid = created + dt.timedelta(seconds=rng.randint(20, 600)) \
                if status in ("delivered", "refunded", "paid", "held") else None
            amount = price * quantity
            rows.append({"id": oid, "order_no": f"B{oid:019d}", "product_id": product_id, "channel_id": channel,
                         "quantity": quantity, "unit_price_cents": price, "amount_cents": amount, "currency": "CNY",
                         "email": f"buyer{int(rng.paretovariate(0.6)) % 100_000}@example.com",
                         "status": status, "token_hash": token, "created_at": created, "updated_at": paid or created,
                         "expires_at": created + dt.timedelta(minutes=15), "paid_at": paid,
                         "delivered_at": paid if status in ("delivered", "refunded") else None,
                         "delivery_attempts": 0, "discount_cents": 0, "coupon_held": False, "points_used": 0,
                         "points_discount_cents": 0, "points_held": False, "risk_review": False})
            if paid is not None and channel is not None:
                pays.append({"order_id": oid, "channel_id": channel, "trade_no": f"T{oid}", "amount_cents": amount,
                             "status": "refunded" if status == "refunded" else "received", "created_at": paid})
        session.execute(orders.insert(), rows)
        if pays:
            session.execute(payments.insert(), pays)
        session.commit()
        made += len(rows)
    return {"products": len(products), "orders": made}


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
    import resource

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.orders import staff as order_staff
    from kamengd.reports import shop
    from kamengd.tickets import services as tickets

    with tempfile.TemporaryDirectory(prefix="kamengd-bench-") as tmp:
        env = install(Path(tmp), args.database_url)
        from bench import kamengd   # (scripts/lib/bench.py: the CLI in a process)
        channel = kamengd("channel", "add", "--type", "sandbox", "--code", "sb", env=env)
        if channel.returncode:
            raise SystemExit(f"channel add failed: {channel.stderr.strip()}")
        config = load_config(env["KAMENGD_CONFIG"], env={})
        app = create_app(config)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with app.app_context():
            t0 = time.perf_counter()
            made = seed(db.session, args.n, now, random.Random(args.seed))
            took = time.perf_counter() - t0
            db.session.remove()
            print(f"{machine()}; {'SQLite' if not args.database_url else args.database_url.split(':')[0]}")
            print(f"seeded {made['orders']:,} orders over a year in {took:.0f} s ({made['orders'] / took:,.0f}/s)")
            tz = config.site.timezone
            figures = {
                "dashboard: sales per day, 7 days": lambda: shop.daily_sales(db.session, now, tz, days=7),
                "sales per day, 30 days": lambda: shop.daily_sales(db.session, now, tz, days=30),
                "orders by status": lambda: shop.orders_by_status(db.session),
                "orders needing a person": lambda: shop.orders_needing_attention(db.session),
                "low stock": lambda: shop.low_stock_products(db.session),
                "after-sales tickets waiting": lambda: tickets.counts(db.session),
                "orders list, first page (newest)": lambda: order_staff.search_orders(
                    db.session, order_staff.OrderSearch(), page=1, page_size=50),
            }
            for name, fn in figures.items():
                median, worst = timed(fn, args.repeat)
                db.session.rollback()
                mark = "" if median < 300 else "   (over W7's 300 ms)"
                print(f"  {name:<36} {median:9.1f} ms median, {worst:9.1f} ms worst{mark}")
            # The orders export as the panel streams it today: pages of 1,000 (its limit: 100,000 rows).
            t0 = time.perf_counter()
            rows = 0
            for page in range(1, args.export // 1000 + 1):
                found, _total = order_staff.search_orders(db.session, order_staff.OrderSearch(), page=page,
                                                          page_size=1000)
                rows += len(found)
                db.session.expunge_all()
            took = time.perf_counter() - t0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  orders export as the panel pages it: {rows:,} rows in {took:.1f} s "
                  f"({rows / took:,.0f} rows/s; offset paging), this process's peak RSS {rss:.0f} MB")
            db.session.remove()
    os.environ.pop("KAMENGD_CONFIG", None)
