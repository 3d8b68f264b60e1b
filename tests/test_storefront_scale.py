"""A storefront that scales (W10 §6): a thousand products are pages of 48, sold out hidden
by default, and a phone downloads a small page whatever the catalogue's size."""
import dataclasses
import io
import re

import pytest

BUDGET_BYTES = 48 * 1024       # the index's HTML, its stylesheet and its scripts together


@pytest.fixture
def big_catalogue(backend, make_install):
    from kamengd.app import create_app
    from kamengd.catalog.models import Product
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys

    cfg = make_install(backend)
    cfg = dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, enabled=False))
    app = create_app(cfg)
    with app.app_context():
        first = create_product(db.session, name="商品 0000 Product", price_cents=100, actor="t")
        rows = [{"name": f"商品 {i:04d} Product with a longer name for the card", "price_cents": 100 + i,
                 "currency": "CNY", "is_active": True, "delivery_mode": "auto", "min_quantity": 1,
                 "max_quantity": 100, "low_stock_threshold": 0, "sort_order": i, "description": "",
                 "low_stock_alerted": False, "created_at": first.created_at, "updated_at": first.created_at}
                for i in range(1, 1003)]
        db.session.execute(Product.__table__.insert(), rows)
        ids = [p.id for p in db.session.query(Product).order_by(Product.id)]
        for product_id in ids[::2]:     # every other product in stock, the rest sold out
            import_keys(db.session, get_vault(), product_id=product_id, fh=io.BytesIO(f"K-{product_id}".encode()),
                        actor="t")
        db.session.commit()
    return app, len(ids)


def test_a_thousand_products_in_pages_of_a_phones_weight(big_catalogue):
    app, total = big_catalogue
    assert total == 1003
    client = app.test_client()
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert html.count('<li class="product">') == 48
    in_stock = (total + 1) // 2
    assert f"{total - in_stock} 个缺货商品已隐藏" in html
    assert f"第 1 / {-(-in_stock // 48)} 页" in html
    assets = sum(len(client.get(src).data) for src in re.findall(r'(?:href|src)="(/static/[^"]+\.(?:css|js))"', html))
    weight = len(page.data) + assets
    assert weight < BUDGET_BYTES, weight
    last = client.get("/", query_string={"page": -(-in_stock // 48)}).get_data(as_text=True)
    assert 0 < last.count('<li class="product">') <= 48 and 'rel="next"' not in last
    assert 'rel="prev"' in last
    everything = client.get("/", query_string={"all": 1}).get_data(as_text=True)
    assert f"第 1 / {-(-total // 48)} 页" in everything and "隐藏缺货商品" in everything
    # A page past the end shows the last one; junk in ?page is ignored.
    assert client.get("/", query_string={"page": 10**6}).status_code == 200
    assert client.get("/", query_string={"page": "x"}).status_code == 200
