"""Suppliers in the panel: add (and sync), map a product, change settings, unmap; only owners
and admins. The supplier is this same shop served over real HTTP in a thread (its agent API,
signed for real), with an agent account standing for the downstream shop."""
import io
import re
import secrets
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import sqlalchemy as sa

from kamengd.audit.models import AuditEntry
from kamengd.catalog.models import Product
from kamengd.suppliers.models import Supplier, SupplierProduct
from panel_support import csrf_of, login, make_staff


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def upstream(app):
    """This shop's agent API on a real port, an agent with a key and 20.00, a product of 4 keys."""
    from kamengd.agents import services as agents
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys

    tag = secrets.token_hex(3)
    with app.app_context():
        product = create_product(db.session, name=f"上游 {tag}", price_cents=500, actor="t")
        import_keys(db.session, get_vault(), product_id=product.id, actor="t",
                    fh=io.BytesIO("\n".join(f"UP-{tag}-{i}" for i in range(4)).encode()))
        level, _ = agents.set_level(db.session, name=f"批发-{tag}", discount="20", actor="t")
        agent = agents.create_agent(db.session, username=f"down-{tag}", level=level.name, actor="t")
        agents.credit_balance(db.session, agent, 2000, reason="t", actor="t")
        key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t", scopes=["read", "order"])
        db.session.commit()
        remote = product.id
        db.session.remove()
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_port}", "key_id": key_id, "secret": secret, "remote": remote,
           "tag": tag}
    server.shutdown()


def _page_post(client, page, url, data):
    token = csrf_of(client.get(page).get_data(as_text=True))
    return client.post(url, data={"csrf_token": token, **data})


def test_an_admin_adds_maps_and_unmaps_a_supplier(backend, app, client, upstream):
    from kamengd.extensions import db

    client.set_cookie("lang", "en")
    assert login(client, make_staff(app, "admin")).status_code == 302
    name = f"up-{upstream['tag']}"
    added = _page_post(client, "/admin/suppliers", "/admin/suppliers", {
        "name": name, "url": upstream["url"], "key_id": upstream["key_id"], "secret": upstream["secret"],
        "low_balance": "50.00"})
    assert added.status_code == 303, added.get_data(as_text=True)[:500]
    detail_url = added.headers["Location"]
    page = client.get(detail_url).get_data(as_text=True)
    assert "synced" in page and upstream["secret"] not in page
    assert "20.00" in page and "low" in page, re.findall(r"<dd>.*?</dd>|flash[^<]*<[^<]*", page)
    assert f"上游 {upstream['tag']}" in page and "4.00" in page   # its cost: 5.00 less 20 %
    supplier_id = int(detail_url.rstrip("/").rsplit("/", 1)[1])
    mapped = _page_post(client, detail_url, f"/admin/suppliers/{supplier_id}/map", {
        "remote_id": str(upstream["remote"]), "create_name": "转售", "markup_kind": "percent", "markup": "12.5"})
    assert mapped.status_code == 303
    with app.app_context():
        row = db.session.scalars(sa.select(SupplierProduct).where(SupplierProduct.supplier_id == supplier_id,
                                                                  SupplierProduct.remote_id == upstream["remote"])).one()
        product = db.session.get(Product, row.product_id)
        assert (product.delivery_mode, product.price_cents, product.cost_price_cents) == ("supplier", 450, 400)
        product_id = product.id
        db.session.remove()
    # The product's own form keeps it supplier-delivered and says why.
    form = client.get(f"/admin/products/{product_id}").get_data(as_text=True)
    assert 'name="delivery_mode" value="supplier"' in form
    # Settings: disabled, then the product is out of stock for buyers.
    assert _page_post(client, detail_url, f"/admin/suppliers/{supplier_id}/settings",
                      {"active": "0", "low_balance": "10", "url": upstream["url"]}).status_code == 303
    listed = client.get("/api/v1/products").get_json()["products"]
    assert all(p["id"] != product_id or p["stock"] == 0 for p in listed)
    assert _page_post(client, detail_url, f"/admin/suppliers/{supplier_id}/unmap",
                      {"product_id": str(product_id)}).status_code == 303
    with app.app_context():
        assert db.session.get(Product, product_id).delivery_mode == "auto"
        actions = set(db.session.scalars(sa.select(AuditEntry.action).where(
            AuditEntry.target.in_([f"supplier:{name}", f"product:{product_id}"]))))
        assert {"supplier.add", "supplier.change", "supplier.map", "supplier.unmap"} <= actions
        details = " ".join(db.session.scalars(sa.select(AuditEntry.details).where(
            AuditEntry.target == f"supplier:{name}")))
        assert upstream["secret"] not in details
        db.session.remove()


def test_a_bad_supplier_form_stores_nothing_and_never_echoes_the_secret(backend, app, client):
    from kamengd.extensions import db

    client.set_cookie("lang", "en")
    assert login(client, make_staff(app, "owner")).status_code == 302
    secret = "never-shown-" + secrets.token_hex(8)
    with app.app_context():
        before = db.session.scalar(sa.select(sa.func.count()).select_from(Supplier))
        db.session.remove()
    for url in ("ftp://x.example", "http://user:pw@x.example", "not a url"):
        answer = _page_post(client, "/admin/suppliers", "/admin/suppliers", {
            "name": "bad", "url": url, "key_id": "ak_x", "secret": secret})
        text = answer.get_data(as_text=True)
        assert answer.status_code == 400 and secret not in text
        assert re.search(r"url: the supplier", text)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Supplier)) == before
        db.session.remove()


@pytest.mark.parametrize("role", ["operator", "support", "finance", "auditor"])
def test_only_owners_and_admins_see_suppliers(backend, app, client, role):
    assert login(client, make_staff(app, role)).status_code == 302
    assert client.get("/admin/suppliers").status_code == 403
