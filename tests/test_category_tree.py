"""The category tree (W5): a category under another, at most three levels, never a loop; a
hidden category hides what is under it; the storefront's navigation goes down the tree and
a category lists what is under it; a coupon for a category is valid under it; the buyer API
says where a product is listed; the panel moves categories. SQLite and MariaDB.
"""
from __future__ import annotations

import io
import re
import secrets

import pytest
import sqlalchemy as sa

from kamengd.errors import InvalidRequest

ACTOR = "tree-test"
KEY = "tree-merchant-key-0123456789abcdef"


def _db():
    from kamengd.extensions import db
    return db


def test_a_tree_of_three_levels_and_no_loop(backend, session):
    from kamengd.audit.models import AuditEntry
    from kamengd.catalog import services as catalog
    from kamengd.catalog.models import Category
    from kamengd.catalog.tree import read_tree

    tag = secrets.token_hex(3)
    games = catalog.create_category(session, name=f"游戏 {tag}", actor=ACTOR)
    tencent = catalog.create_category(session, name=f"腾讯 {tag}", parent_id=str(games.id), actor=ACTOR)
    points = catalog.create_category(session, name=f"点券 {tag}", parent_id=tencent.id, actor=ACTOR)
    tree = read_tree(session)
    assert [n.id for n in tree.path(points.id)] == [games.id, tencent.id, points.id]
    assert tree.label(points.id) == f"游戏 {tag} › 腾讯 {tag} › 点券 {tag}"
    assert tree.below(games.id) == {games.id, tencent.id, points.id}

    with pytest.raises(InvalidRequest, match="at most 3 levels"):           # a fourth level
        catalog.create_category(session, name=f"深 {tag}", parent_id=points.id, actor=ACTOR)
    with pytest.raises(InvalidRequest, match="under itself or a category under it"):   # a loop
        catalog.update_category(session, games, parent_id=points.id, actor=ACTOR)
    with pytest.raises(InvalidRequest, match="under itself"):
        catalog.update_category(session, games, parent_id=games.id, actor=ACTOR)
    for bad, words in (("x", "not a whole number"), ("999999999", "does not exist"), (2**40, "does not exist")):
        with pytest.raises(InvalidRequest, match=words):
            catalog.create_category(session, name=f"bad {tag}", parent_id=bad, actor=ACTOR)
    assert session.scalar(sa.select(sa.func.count()).select_from(Category)
                          .where(Category.name == f"bad {tag}")) == 0

    # A branch of two moved under a top-level category: three levels, allowed; one more is not.
    other = catalog.create_category(session, name=f"其他 {tag}", actor=ACTOR)
    assert catalog.update_category(session, tencent, parent_id=other.id, actor=ACTOR) == {
        "parent": {"old": games.id, "new": other.id}}
    deeper = catalog.create_category(session, name=f"更深 {tag}", parent_id=games.id, actor=ACTOR)
    with pytest.raises(InvalidRequest, match="at most 3 levels"):
        catalog.update_category(session, other, parent_id=deeper.id, actor=ACTOR)
    # Left as it is unless given; "" is the top level.
    assert catalog.update_category(session, points, name=f"点券 {tag}", actor=ACTOR) == {}
    assert catalog.update_category(session, tencent, parent_id="", actor=ACTOR) == {
        "parent": {"old": other.id, "new": None}}
    assert [(c.id, depth) for c, _n, depth in catalog.categories_in_tree(session)
            if c.id in (tencent.id, points.id)] == [(tencent.id, 0), (points.id, 1)]
    moves = session.scalars(sa.select(AuditEntry.details).where(AuditEntry.target == f"category:{tencent.id}")
                            .order_by(AuditEntry.id)).all()
    assert '"parent"' in moves[0] and all('"parent"' in d for d in moves[1:]) and len(moves) == 3


@pytest.fixture
def tree_shop(app):
    """游戏 › 腾讯 › 点券 and 游戏 › 网易 (hidden), a product in each and one in 游戏 itself;
    keys for all; an Epay channel."""
    from kamengd.catalog.services import create_category, create_product
    from kamengd.context import get_vault
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    tag = secrets.token_hex(3)
    db = _db()
    with app.app_context():
        top = create_category(db.session, name=f"游戏 {tag}", actor=ACTOR)
        mid = create_category(db.session, name=f"腾讯 {tag}", parent_id=top.id, actor=ACTOR)
        low = create_category(db.session, name=f"点券 {tag}", parent_id=mid.id, actor=ACTOR)
        hidden = create_category(db.session, name=f"网易 {tag}", parent_id=top.id, is_active=False, actor=ACTOR)
        found = {"tag": tag, "top": top.id, "mid": mid.id, "low": low.id, "hidden": hidden.id}
        for key, category in (("p_top", top.id), ("p_low", low.id), ("p_hidden", hidden.id)):
            p = create_product(db.session, name=f"{key} {tag}", price_cents=1000, actor=ACTOR, category_id=category)
            import_keys(db.session, get_vault(), product_id=p.id, actor=ACTOR,
                        fh=io.BytesIO("\n".join(f"T-{secrets.token_hex(8)}" for _ in range(5)).encode()))
            found[key] = p.id
        found["channel"] = f"tr{tag}"
        add_channel(db.session, get_vault(), channel_type="epay", code=found["channel"], actor=ACTOR,
                    options={"gateway": "https://pay.example.com", "pid": "7007", "key": KEY})
        db.session.commit()
        db.session.remove()
    return found


def test_the_storefront_goes_down_the_tree(client, tree_shop):
    s, tag = tree_shop, tree_shop["tag"]
    html = client.get("/", query_string={"q": tag}).get_data(as_text=True)
    # The top level in the navigation; what is under it shown in its sections, by path.
    assert f'/?category={s["top"]}' in html and f'/?category={s["low"]}&amp;' not in html
    assert f"<h2>游戏 {tag} › 腾讯 {tag} › 点券 {tag}</h2>" in html and f"p_low {tag}" in html
    # A hidden category hides its products (and the navigation never offers it).
    assert f"p_hidden {tag}" not in html and f"网易 {tag}" not in html
    # 游戏: its own product and those under it; its subcategory offered (not the hidden one).
    html = client.get("/", query_string={"category": s["top"]}).get_data(as_text=True)
    assert f"p_top {tag}" in html and f"p_low {tag}" in html and f"p_hidden {tag}" not in html
    sub = re.search(r'<nav class="categories sub".*?</nav>', html, re.S).group(0)
    assert f'/?category={s["mid"]}' in sub and f"网易 {tag}" not in sub
    # 点券: only its product; the trail above it marked.
    html = client.get("/", query_string={"category": s["low"]}).get_data(as_text=True)
    assert f"p_low {tag}" in html and f"p_top {tag}" not in html
    assert f'aria-current="page">点券 {tag}</a>' in html and f'aria-current="true">腾讯 {tag}</a>' in html
    # The product page's breadcrumb is the path.
    page = client.get(f"/product/{s['p_low']}").get_data(as_text=True)
    crumbs = re.search(r'<nav class="crumbs".*?</nav>', page, re.S).group(0)
    assert crumbs.index(f"游戏 {tag}") < crumbs.index(f"腾讯 {tag}") < crumbs.index(f"点券 {tag}")
    page = client.get(f"/product/{s['p_hidden']}").get_data(as_text=True)   # a direct link answers
    assert f"网易 {tag}" not in re.search(r'<nav class="crumbs".*?</nav>', page, re.S).group(0)
    # A hidden parent hides everything under it.
    html = client.get("/", query_string={"category": s["hidden"], "q": tag}).get_data(as_text=True)
    assert f"p_top {tag}" in html and f"p_hidden {tag}" not in html   # (a hidden category: all shown)


def test_hiding_a_parent_hides_the_branch(app, client, tree_shop):
    from kamengd.catalog import services as catalog
    s, tag = tree_shop, tree_shop["tag"]
    db = _db()
    with app.app_context():
        catalog.update_category(db.session, catalog.get_category(db.session, s["top"]), is_active=False, actor=ACTOR)
        db.session.commit()
        db.session.remove()
    html = client.get("/", query_string={"q": tag, "all": 1}).get_data(as_text=True)
    assert f"p_low {tag}" not in html and f"p_top {tag}" not in html
    listed = {p["id"]: p for p in client.get("/api/v1/products").get_json()["products"]}
    assert "category" not in listed[s["p_low"]]


def test_the_api_says_where_a_product_is_listed(client, tree_shop):
    s, tag = tree_shop, tree_shop["tag"]
    listed = {p["id"]: p for p in client.get("/api/v1/products").get_json()["products"]}
    assert listed[s["p_low"]]["category_id"] == s["low"]
    assert listed[s["p_low"]]["category"] == f"游戏 {tag} › 腾讯 {tag} › 点券 {tag}"
    assert "category" not in listed[s["p_hidden"]] and "category_id" not in listed[s["p_hidden"]]


def test_a_category_coupon_is_valid_under_it(app, client, tree_shop):
    from kamengd.marketing.coupons import create_coupon, parse_coupon_form
    s = tree_shop
    code = f"TREE{secrets.token_hex(3)}".upper()
    db = _db()
    with app.app_context():
        create_coupon(db.session, code, parse_coupon_form({"kind": "fixed", "amount_off": "1.00", "scope": "category",
                                                           "scope_id": str(s["top"])}, "Asia/Shanghai"), actor=ACTOR)
        db.session.commit()
        db.session.remove()

    def buy(product):
        return client.post("/api/v1/orders", json={"product_id": s[product], "quantity": 1, "email": "t@example.com",
                                                   "channel": s["channel"], "coupon": code})
    for product in ("p_top", "p_low"):   # its own category and two levels under it
        placed = buy(product)
        assert placed.status_code == 201 and placed.get_json()["discount"] == "1.00", placed.get_json()
    # A product elsewhere: refused, nothing written.
    from kamengd.catalog.services import create_product
    with app.app_context():
        s["p_none"] = create_product(db.session, name=f"loose {s['tag']}", price_cents=500, actor=ACTOR).id
        db.session.commit()
        db.session.remove()
    refused = buy("p_none")
    assert refused.status_code in (400, 409) and "coupon" in refused.get_json()["error"]["message"]


def test_the_panel_moves_categories(app, client):
    from kamengd.catalog.models import Category
    from panel_support import login, make_staff, post
    staff = make_staff(app, "operator")
    client.set_cookie("lang", "en")
    assert login(client, staff).status_code == 302
    tag = secrets.token_hex(3)
    assert post(client, "/admin/categories/new", {"name": f"上 {tag}", "sort_order": "0", "is_active": "1"},
                page_url="/admin/categories").status_code == 303
    db = _db()
    with app.app_context():
        top = db.session.scalars(sa.select(Category.id).where(Category.name == f"上 {tag}")).one()
    assert post(client, "/admin/categories/new", {"name": f"下 {tag}", "sort_order": "0", "is_active": "1",
                                                  "parent_id": str(top)}, page_url="/admin/categories").status_code == 303
    with app.app_context():
        low = db.session.scalars(sa.select(Category).where(Category.name == f"下 {tag}")).one()
        assert low.parent_id == top
        low_id = low.id
    page = client.get("/admin/categories").get_data(as_text=True)
    assert re.search(rf'<option value="{top}" selected>上 {tag}</option>', page)   # its row shows where it is
    assert f"上 {tag} › 下 {tag}" in client.get("/admin/products/new").get_data(as_text=True)
    # A move that would loop: said, nothing changed.
    resp = post(client, f"/admin/categories/{top}", {"name": f"上 {tag}", "sort_order": "0", "is_active": "1",
                                                     "parent_id": str(low_id)}, page_url="/admin/categories")
    assert resp.status_code == 303
    assert "under itself" in client.get("/admin/categories").get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Category, top).parent_id is None
    # Back to the top level.
    post(client, f"/admin/categories/{low_id}", {"name": f"下 {tag}", "sort_order": "0", "is_active": "1",
                                                 "parent_id": ""}, page_url="/admin/categories")
    with app.app_context():
        assert db.session.get(Category, low_id).parent_id is None
