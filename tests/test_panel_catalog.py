"""Products and categories: the services (kamengd.catalog.services) and the panel pages."""
import json
import secrets

import pytest
import sqlalchemy as sa

from kamengd.audit.models import AuditEntry
from kamengd.catalog import services as catalog
from kamengd.catalog.models import Category, Product
from kamengd.errors import Conflict, InvalidRequest, NotFound
from panel_support import login, make_staff, post

ACTOR = "staff:tester"


def unique(prefix: str) -> str:
    return f"{prefix} {secrets.token_hex(4)}"


def form(**overrides) -> dict:
    values = {"name": unique("月卡"), "category_id": "", "description": "", "price": "9.90", "cost_price": "",
              "delivery_mode": "auto", "min_quantity": "1", "max_quantity": "100", "low_stock_threshold": "0",
              "sort_order": "0", "is_active": "1"}
    values.update(overrides)
    return values


def audits(session, target: str, action: str | None = None) -> list[tuple[str, str, dict]]:
    query = sa.select(AuditEntry).where(AuditEntry.target == target)
    if action:
        query = query.where(AuditEntry.action == action)
    return [(a.action, a.actor, json.loads(a.details)) for a in session.scalars(query.order_by(AuditEntry.seq))]


# --- services -------------------------------------------------------------

def test_parse_product_form_reads_yuan_as_cents():
    values = catalog.parse_product_form(form(price=" 9.9 ", cost_price="0", min_quantity="2", max_quantity="5",
                                             low_stock_threshold="10", sort_order="3", is_active=""))
    assert values["price_cents"] == 990 and values["cost_price_cents"] == 0
    assert (values["min_quantity"], values["max_quantity"], values["low_stock_threshold"]) == (2, 5, 10)
    assert values["sort_order"] == 3 and values["is_active"] is False and values["category_id"] is None
    assert catalog.parse_product_form(form(cost_price=""))["cost_price_cents"] is None


@pytest.mark.parametrize("field, value, message", [
    ("price", "", "price: required"),
    ("price", "abc", "price: 'abc' is not a decimal amount"),
    ("price", "-1", "price: must be more than zero"),
    ("price", "0", "price: must be more than zero"),
    ("price", "1.234", "more than two decimal places"),
    ("price", "1e20", "too large"),
    ("cost_price", "-0.01", "cost price: must be zero or more"),
    ("min_quantity", "one", "minimum quantity: 'one' is not a whole number"),
    ("max_quantity", "", "maximum quantity: required"),
    ("sort_order", "1.5", "sort order: '1.5' is not a whole number"),
    ("sort_order", "--5", "sort order: '--5' is not a whole number"),
    ("min_quantity", "-", "minimum quantity: '-' is not a whole number"),
    ("low_stock_threshold", "9" * 30, "not a whole number"),
    ("category_id", "x", "category: 'x' is not a whole number"),
])
def test_parse_product_form_refuses_bad_text(field, value, message):
    with pytest.raises(InvalidRequest) as exc:
        catalog.parse_product_form(form(**{field: value}))
    assert message in exc.value.message


def test_create_product_with_every_field(backend, session):
    category = catalog.create_category(session, name=unique("游戏"), actor=ACTOR)
    values = catalog.parse_product_form(form(category_id=str(category.id), description="说明\r\nline 2",
                                             cost_price="5.00", delivery_mode="manual", min_quantity="2",
                                             max_quantity="9", low_stock_threshold="4", sort_order="7",
                                             is_active=""))
    p = catalog.create_product(session, **values, actor=ACTOR, source_ip="192.0.2.1")
    assert (p.category_id, p.price_cents, p.cost_price_cents, p.delivery_mode) == (category.id, 990, 500, "manual")
    assert (p.min_quantity, p.max_quantity, p.low_stock_threshold, p.sort_order) == (2, 9, 4, 7)
    assert p.is_active is False and p.description == "说明\nline 2"
    [(action, actor, details)] = audits(session, f"product:{p.id}")
    assert (action, actor) == ("product.create", ACTOR)
    assert details["price"] == "9.90" and details["visible"] is False


def test_update_product_audits_old_and_new_of_changed_fields(backend, session, make_product):
    old_name = unique("old")
    p = make_product(name=old_name, price_cents=990)
    changes = catalog.update_product(session, p, actor=ACTOR, name="  new name ", price_cents=1000,
                                     min_quantity=1, max_quantity=100, delivery_mode="auto")
    assert changes == {"name": {"old": old_name, "new": "new name"}, "price": {"old": "9.90", "new": "10.00"}}
    assert p.name == "new name" and p.price_cents == 1000
    action, actor, details = audits(session, f"product:{p.id}")[-1]
    assert (action, actor) == ("product.update", ACTOR)
    assert details["changes"] == changes
    # Saving the same values again changes and records nothing.
    before = len(audits(session, f"product:{p.id}"))
    assert catalog.update_product(session, p, actor=ACTOR, name="new name", price_cents=1000) == {}
    assert len(audits(session, f"product:{p.id}")) == before


@pytest.mark.parametrize("changes, message", [
    ({"name": "   "}, "name: must not be empty"),
    ({"name": "x" * 201}, "name: at most 200 characters"),
    ({"description": "x" * (catalog.MAX_DESCRIPTION + 1)}, "description: at most"),
    ({"price_cents": 0}, "price: must be more than zero"),
    ({"price_cents": -5}, "price: must be more than zero"),
    ({"price_cents": 10**13}, "price: must be more than zero and less than"),
    ({"cost_price_cents": -1}, "cost price: must be zero or more"),
    ({"delivery_mode": "email"}, "delivery: must be one of auto, manual"),
    ({"min_quantity": 0}, "minimum quantity: a whole number from 1"),
    ({"min_quantity": 5, "max_quantity": 4}, "quantity limits: need 1 <= min <= max"),
    ({"max_quantity": catalog.MAX_QUANTITY + 1}, "maximum quantity: a whole number from 1 to 100000"),
    ({"low_stock_threshold": -1}, "low-stock threshold: a whole number from 0"),
    ({"sort_order": 10000}, "sort order: a whole number from 0 to 9999"),
    ({"category_id": 2**31 - 2}, "category: category 2147483646 does not exist"),
])
def test_update_product_refuses_bad_values_and_changes_nothing(backend, session, make_product, changes, message):
    p = make_product(name=unique("strict"))
    before = {f: getattr(p, f) for f in catalog.PRODUCT_FIELDS}
    with pytest.raises(InvalidRequest) as exc:
        catalog.update_product(session, p, actor=ACTOR, **changes)
    assert message in exc.value.message
    assert {f: getattr(p, f) for f in catalog.PRODUCT_FIELDS} == before
    assert [a for a, _x, _d in audits(session, f"product:{p.id}")] == ["product.create"]


def test_update_product_checks_only_what_changes(backend, session, make_product):
    """A product saved under older rules can still be hidden."""
    p = make_product(name=unique("legacy"))
    p.description = "x" * (catalog.MAX_DESCRIPTION + 10)
    session.flush()
    assert catalog.set_product_visible(session, p, False, actor=ACTOR) is True
    assert p.is_active is False
    assert catalog.set_product_visible(session, p, False, actor=ACTOR) is False
    _a, _b, details = audits(session, f"product:{p.id}", "product.update")[-1]
    assert details["changes"] == {"visible": {"old": True, "new": False}}


def test_long_description_is_audited_by_its_start(backend, session, make_product):
    p = make_product(name=unique("desc"))
    catalog.update_product(session, p, actor=ACTOR, description="y" * 1000)
    _a, _b, details = audits(session, f"product:{p.id}", "product.update")[-1]
    assert details["changes"]["description"]["new"] == "y" * catalog.AUDIT_TEXT + "…"


def test_update_product_refuses_unknown_fields(backend, session, make_product):
    with pytest.raises(TypeError):
        catalog.update_product(session, make_product(), actor=ACTOR, currency="USD")


def test_list_products_searches_names_literally(backend, session, make_product):
    tag = secrets.token_hex(4)
    a = make_product(name=f"100% {tag} 月卡")
    b = make_product(name=f"100x {tag} 周卡")
    rows, total = catalog.list_products(session, query=f"100% {tag}")
    assert total == 1 and [p.id for p, _c in rows] == [a.id]
    rows, total = catalog.list_products(session, query=tag)
    assert {p.id for p, _c in rows} == {a.id, b.id} and total == 2


def test_categories_unique_names_and_updates(backend, session):
    name = unique("Games")
    c = catalog.create_category(session, name=f"  {name} ", sort_order="5", actor=ACTOR)
    assert (c.name, c.sort_order, c.is_active) == (name, 5, True)
    with pytest.raises(Conflict, match="already exists"):
        catalog.create_category(session, name=name.upper(), actor=ACTOR)
    other = catalog.create_category(session, name=unique("Other"), actor=ACTOR)
    with pytest.raises(Conflict, match="already exists"):
        catalog.update_category(session, other, name=name, actor=ACTOR)
    # Its own name (in another case) is no clash.
    assert catalog.update_category(session, c, name=name.upper(), actor=ACTOR) == {
        "name": {"old": name, "new": name.upper()}}
    assert catalog.update_category(session, c, sort_order=1, is_active=False, actor=ACTOR) == {
        "sort_order": {"old": 5, "new": 1}, "visible": {"old": True, "new": False}}
    assert catalog.update_category(session, c, name=name.upper(), sort_order="1", is_active=False,
                                   actor=ACTOR) == {}
    assert [a for a, _x, _d in audits(session, f"category:{c.id}")] == [
        "category.create", "category.update", "category.update"]


@pytest.mark.parametrize("name, sort_order, message", [
    (" ", "0", "name: must not be empty"),
    ("x" * 101, "0", "name: at most 100 characters"),
    (None, "-1", "sort order: a whole number from 0 to 9999"),
    (None, "a", "sort order: 'a' is not a whole number"),
])
def test_category_bad_input(backend, session, name, sort_order, message):
    with pytest.raises(InvalidRequest) as exc:
        catalog.create_category(session, name=unique("ok") if name is None else name, sort_order=sort_order,
                                actor=ACTOR)
    assert message in exc.value.message


def test_get_unknown(backend, session):
    with pytest.raises(NotFound):
        catalog.get_product(session, 2**31 - 1)
    with pytest.raises(NotFound):
        catalog.get_category(session, 0)


# --- pages ----------------------------------------------------------------

@pytest.fixture
def operator(app, client):
    staff = make_staff(app, "operator")
    client.set_cookie("lang", "en")
    assert login(client, staff).status_code == 302
    return staff


def product_named(app, name):
    from kamengd.extensions import db

    with app.app_context():
        product = db.session.scalars(sa.select(Product).where(Product.name == name)).first()
        db.session.expunge_all()
        return product


def db_audits(app, target, action=None):
    from kamengd.extensions import db

    with app.app_context():
        return audits(db.session, target, action)


def test_create_edit_and_hide_a_product(app, client, operator):
    values = form(price="12.50", cost_price="8", description="<b>not bold</b>")
    resp = post(client, "/admin/products/new", values, page_url="/admin/products/new")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/products")
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert f"Product {values['name']} created." in page
    p = product_named(app, values["name"])
    assert (p.price_cents, p.cost_price_cents, p.is_active) == (1250, 800, True)
    [(action, actor, _d)] = db_audits(app, f"product:{p.id}")
    assert (action, actor) == ("product.create", f"staff:{operator.username}")

    # The edit page shows the stored values; saving a change is audited with old and new.
    edit = client.get(f"/admin/products/{p.id}").get_data(as_text=True)
    assert 'value="12.50"' in edit and "&lt;b&gt;not bold&lt;/b&gt;" in edit
    resp = post(client, f"/admin/products/{p.id}", {**values, "price": "13", "max_quantity": "5",
                                                     "buyer_daily_limit": "3"},
                page_url=f"/admin/products/{p.id}")
    assert resp.status_code == 303
    p = product_named(app, values["name"])
    assert (p.price_cents, p.max_quantity, p.buyer_daily_limit) == (1300, 5, 3)
    _a, _b, details = db_audits(app, f"product:{p.id}", "product.update")[-1]
    assert details["changes"] == {"price": {"old": "12.50", "new": "13.00"},
                                  "max_quantity": {"old": 100, "new": 5}, "daily_limit": {"old": None, "new": 3}}
    # The limit is kept by an edit of something else, and shown on the page.
    assert 'id="buyer_daily_limit" name="buyer_daily_limit" type="number" min="1" max="100000" value="3"' in \
        client.get(f"/admin/products/{p.id}").get_data(as_text=True)

    # Hide from the list, then show again.
    resp = post(client, f"/admin/products/{p.id}/visibility", {"visible": "0"}, page_url="/admin/products")
    assert resp.status_code == 303
    assert product_named(app, values["name"]).is_active is False
    listing = client.get(f"/admin/products?q={values['name']}").get_data(as_text=True)
    assert "Hidden" in listing and values["name"] in listing
    post(client, f"/admin/products/{p.id}/visibility", {"visible": "1"}, page_url="/admin/products")
    assert product_named(app, values["name"]).is_active is True
    visibility = [d["changes"]["visible"] for _a, _b, d in db_audits(app, f"product:{p.id}", "product.update")
                  if "visible" in d["changes"]]
    assert visibility == [{"old": True, "new": False}, {"old": False, "new": True}]


@pytest.mark.parametrize("overrides, message", [
    ({"price": "9.999"}, "more than two decimal places"),
    ({"price": "free"}, "is not a decimal amount"),
    ({"min_quantity": "10", "max_quantity": "2"}, "quantity limits: need 1 &lt;= min &lt;= max"),
    ({"name": ""}, "name: must not be empty"),
    ({"delivery_mode": "drone"}, "delivery: must be one of"),
    ({"category_id": "999999999"}, "category: category 999999999 does not exist"),
    ({"sort_order": "99999999999999999999"}, "sort order"),
    ({"buyer_daily_limit": "0"}, "daily limit per buyer"),
])
def test_bad_product_form_is_refused_and_kept(app, client, operator, overrides, message):
    values = form(**overrides)
    resp = post(client, "/admin/products/new", values, page_url="/admin/products/new")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400, page
    assert message in page
    if values["name"]:
        assert f'value="{values["name"]}"' in page   # what was typed is kept
        assert product_named(app, values["name"]) is None


def test_bad_edit_changes_nothing(app, client, operator):
    values = form()
    post(client, "/admin/products/new", values, page_url="/admin/products/new")
    p = product_named(app, values["name"])
    resp = post(client, f"/admin/products/{p.id}", {**values, "price": "-3"}, page_url=f"/admin/products/{p.id}")
    assert resp.status_code == 400 and "price: must be more than zero" in resp.get_data(as_text=True)
    assert product_named(app, values["name"]).price_cents == 990
    assert [a for a, _b, _c in db_audits(app, f"product:{p.id}")] == ["product.create"]
    assert client.get("/admin/products/999999999").status_code == 404
    resp = post(client, f"/admin/products/{p.id}/visibility", {"visible": "maybe"}, page_url="/admin/products")
    assert resp.status_code == 303 and product_named(app, values["name"]).is_active is True


def test_categories_page(app, client, operator):
    name = unique("点卡")
    resp = post(client, "/admin/categories/new", {"name": name, "sort_order": "3", "is_active": "1"},
                page_url="/admin/categories")
    assert resp.status_code == 303
    from kamengd.extensions import db
    with app.app_context():
        category = db.session.scalars(sa.select(Category).where(Category.name == name)).one()
        category_id = category.id
    page = client.get("/admin/categories").get_data(as_text=True)
    assert name in page and f'/admin/categories/{category_id}"' in page

    # A second category of the same name: a clear message, what was typed kept, nothing created.
    resp = post(client, "/admin/categories/new", {"name": name, "sort_order": "1"}, page_url="/admin/categories")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 409 and "already exists" in page and f'value="{name}"' in page

    # Rename, reorder, hide in one form (no is_active: the box is unchecked).
    resp = post(client, f"/admin/categories/{category_id}", {"name": name + " 新", "sort_order": "8"},
                page_url="/admin/categories")
    assert resp.status_code == 303
    with app.app_context():
        category = db.session.get(Category, category_id)
        assert (category.name, category.sort_order, category.is_active) == (name + " 新", 8, False)
    _a, _b, details = db_audits(app, f"category:{category_id}", "category.update")[-1]
    assert details["changes"]["visible"] == {"old": True, "new": False}

    # The product form offers it.
    assert name + " 新" in client.get("/admin/products/new").get_data(as_text=True)

    resp = post(client, f"/admin/categories/{category_id}", {"name": "", "sort_order": "8"},
                page_url="/admin/categories")
    assert resp.status_code == 303
    assert "name: must not be empty" in client.get(resp.headers["Location"]).get_data(as_text=True)
    refused = client.post("/admin/categories/999999999", data={})       # no CSRF token: back to the form
    assert refused.status_code == 303 and refused.headers["Location"].endswith("restore=1")


def test_roles(app):
    """Support sees the catalogue but cannot change it; nothing decides roles in the views."""
    client = app.test_client()
    support = make_staff(app, "support")
    assert login(client, support).status_code == 302
    page = client.get("/admin/products")
    assert page.status_code == 200 and "/admin/products/new" not in page.get_data(as_text=True)
    assert client.get("/admin/categories").status_code == 200
    assert client.get("/admin/products/new").status_code == 403
    assert post(client, "/admin/categories/new", {"name": unique("x")}, page_url="/admin/products").status_code == 403
