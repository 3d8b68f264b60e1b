"""Sub-stations (分站) and invite links, on both databases, through the real storefront and
the buyer API: an agent's host name (and /s/<agent>, and the forwarded host behind a
proxy) serves its storefront at its own prices with its title, notice and contact; the
order is the agent's sale, and on the gateway's payment the agent earns its margin first,
then each ancestor its own; an invite link (?ref=) attributes a buyer for agents.ref_days
days by a signed cookie; hosts are validated and bound once."""
import dataclasses
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from conftest import assert_one_line_error, run_cli
from panel_support import csrf_of
from kamengd.agents import services as agents
from kamengd.agents import sites
from kamengd.errors import Conflict, InvalidRequest
from kamengd.payments import epay
from kamengd.settings.services import set_setting
from test_commission import build_tree

KEY = "station-merchant-key-" + "x" * 16


@pytest.fixture
def station(app):
    """shop -> a (10 % off) -> b (5 %) -> c (2 %) on a 10.00 product; c sells at 12.00 on
    its own host, with a title, notice and contact; an Epay channel."""
    from kamengd.agents.models import Agent
    from kamengd.extensions import db
    from kamengd.payments.services import add_channel
    from kamengd.context import get_vault

    tree = build_tree(app, price_cents=1000, discounts=["10", "5", "2"])
    t = secrets.token_hex(3)
    with app.app_context():
        from kamengd.catalog.models import Product
        tree["name"] = db.session.get(Product, tree["product"]).name
        c = db.session.get(Agent, tree["c"]["id"])
        agents.set_selling_price(db.session, c, product_id=tree["product"], price="12.00", actor="t")
        sites.set_site(db.session, c, title=f"<i>小C的店</i> {t}", notice="新品上架 <script>x</script>",
                       contact="QQ 10001", actor="t")
        tree["host"] = sites.bind_host(db.session, c, f"C-{t}.Example.test", actor="t").host
        tree["channel"] = add_channel(db.session, get_vault(), channel_type="epay", code=f"st{t}", actor="t",
                                      options={"gateway": "http://127.0.0.1:9", "pid": "3003", "key": KEY}).code
        db.session.commit()
        db.session.remove()
    return tree


def buy(client, tree, path="", **kwargs):
    page = client.get(f"{path}/product/{tree['product']}", **kwargs).get_data(as_text=True)
    answer = client.post(f"{path}/product/{tree['product']}",
                         data={"quantity": "2", "email": "buyer@example.com", "channel": tree["channel"],
                               "csrf_token": csrf_of(page)}, **kwargs)
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    buy.last_pay_url = answer.headers["Location"]
    return re.search(r"out_trade_no=(\d+)", answer.headers["Location"]).group(1)


def pay(client, app, order_no):
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        order = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
        money = f"{order.amount_cents / 100:.2f}"
        db.session.remove()
    params = {"pid": "3003", "trade_no": f"T{order_no}", "out_trade_no": order_no, "type": "alipay",
              "name": "x", "money": money, "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    params["sign_type"] = "MD5"
    return params


def settle(client, app, tree, order_no):
    params = pay(client, app, order_no)
    assert client.get(f"/pay/{tree['channel']}/notify", query_string=params).get_data(as_text=True) == "success"


def shop_address(app):
    from kamengd.settings.services import shop_url

    with app.app_context():
        return shop_url().rstrip("/")


def sale(app, order_no):
    """(amount, seller, status, {agent id: commission cents})"""
    from kamengd.agents.models import Commission
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        order = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
        earned = dict(db.session.execute(sa.select(Commission.agent_id, Commission.amount_cents)
                                         .where(Commission.order_id == order.id)).all())
        found = (order.amount_cents, order.seller_agent_id, order.status, earned)
        db.session.remove()
    return found


def test_an_agents_host_is_its_storefront_at_its_prices_and_its_sale(backend, app, client, station):
    host = {"Host": station["host"]}
    page = client.get("/", query_string={"q": station["name"]}, headers=host).get_data(as_text=True)
    assert "12.00 CNY" in page and "10.00 CNY" not in page                       # its price, not the shop's
    assert "&lt;i&gt;小C的店&lt;/i&gt;" in page and "<i>小C" not in page               # its title, escaped
    assert "新品上架 &lt;script&gt;" in page and "QQ 10001" in page
    assert "12.00" in client.get(f"/product/{station['product']}", headers=host).get_data(as_text=True)
    api = client.get("/api/v1/products", headers=host).get_json()["products"]
    assert [p["price"] for p in api if p["id"] == station["product"]] == ["12.00"]
    main = client.get("/").get_data(as_text=True)
    assert "小C的店" not in main                                                      # the shop is the shop

    order_no = buy(client, station, headers=host)
    assert sale(app, order_no)[:3] == (2400, station["c"]["id"], "pending")
    sent = parse_qs(urlsplit(buy.last_pay_url).query)   # the buyer comes back to the station
    assert sent["return_url"][0].startswith(f"http://{station['host']}/pay/{station['channel']}/return?")
    assert sent["notify_url"][0] == f"{shop_address(app)}/pay/{station['channel']}/notify"
    back = client.get(urlsplit(sent["return_url"][0]).path, query_string=urlsplit(sent["return_url"][0]).query,
                      headers=host)
    assert back.status_code == 200 and "小C的店" in back.get_data(as_text=True)
    settle(client, app, station, order_no)
    settle(client, app, station, order_no)                                           # the gateway retries
    # c earns 2 × (12.00 − 9.80), b 2 × (9.80 − 9.50), a 2 × (9.50 − 9.00): once each.
    assert sale(app, order_no)[2:] == ("delivered", {station["c"]["id"]: 440, station["b"]["id"]: 60,
                                                     station["a"]["id"]: 100})
    answer = client.post("/api/v1/orders", headers=host, json={"product_id": station["product"], "quantity": 1,
                                                               "email": "api@example.com",
                                                               "channel": station["channel"]})
    assert answer.status_code == 201 and answer.get_json()["amount"] == "12.00"
    assert sale(app, answer.get_json()["order_no"])[1] == station["c"]["id"]
    assert client.get("/admin/login", headers=host).status_code == 404               # never the panel there
    assert client.get("/agent/login", headers=host).status_code == 404


def test_the_same_station_at_s_agent_keeps_its_links_inside(backend, app, client, station):
    prefix = f"/s/{station['c']['username']}"
    page = client.get(f"{prefix}/", query_string={"q": station["name"]}).get_data(as_text=True)
    assert "12.00 CNY" in page and f'href="{prefix}/product/{station["product"]}"' in page
    order_no = buy(client, station, path=prefix)
    assert sale(app, order_no)[:2] == (2400, station["c"]["id"])
    sent = parse_qs(urlsplit(buy.last_pay_url).query)
    assert sent["return_url"][0].startswith(f"{shop_address(app)}{prefix}/pay/{station['channel']}/return?")
    assert client.get(f"{prefix}/order/{order_no}").status_code == 200
    for closed in (f"{prefix}/admin/login", f"{prefix}/agent/login", "/s/nobody-here/", f"{prefix}/api/v1/agent/balance"):
        assert client.get(closed).status_code == 404, closed


def test_a_disabled_agents_station_is_not_found(backend, app, client, station):
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    with app.app_context():
        agents.set_agent_active(db.session, db.session.get(Agent, station["c"]["id"]), False, actor="t")
        db.session.commit()
        db.session.remove()
    assert client.get("/", headers={"Host": station["host"]}).status_code == 404
    assert client.get(f"/s/{station['c']['username']}/").status_code == 404
    token = csrf_of(client.get(f"/product/{station['product']}").get_data(as_text=True))
    assert client.post(f"/s/{station['c']['username']}/product/{station['product']}",
                       data={"quantity": "1", "email": "b@example.com", "channel": station["channel"],
                             "csrf_token": token}).status_code == 404


def test_behind_a_proxy_the_forwarded_host_is_the_station(backend, installed, station):
    from kamengd.app import create_app

    config = dataclasses.replace(installed, server=dataclasses.replace(installed.server, proxy_count=1),
                                 ratelimit=dataclasses.replace(installed.ratelimit, enabled=False))
    proxied = create_app(config).test_client()
    page = proxied.get("/", headers={"X-Forwarded-Host": station["host"], "X-Forwarded-For": "203.0.113.9"})
    assert "小C的店" in page.get_data(as_text=True)


def test_an_invite_link_attributes_the_buyer_at_the_shops_price(backend, app, client, station):
    b = station["b"]
    assert [c for c in client.get(f"/?ref={b['username']}").headers.getlist("Set-Cookie") if c.startswith("ref=")]
    client.get(f"/?ref={station['c']['username']}")                                # the first agent keeps it
    order_no = buy(client, station)
    assert sale(app, order_no)[:2] == (2000, b["id"])
    settle(client, app, station, order_no)
    # b earns 2 × (10.00 − 9.50), a 2 × (9.50 − 9.00); c brought nobody.
    assert sale(app, order_no)[3] == {b["id"]: 100, station["a"]["id"]: 100}

    other = app.test_client()
    other.set_cookie("ref", client.get_cookie("ref").value[:-2] + "xx")             # altered: worth nothing
    assert sale(app, buy(other, station))[1] is None
    for link in ("/?ref=nobody-at-all", f"/?ref=../{b['username']}"):                 # no such agent
        assert not [c for c in other.get(link).headers.getlist("Set-Cookie") if c.startswith("ref=")]


def test_an_invite_cookie_past_its_days_is_forgotten(backend, app, client, station):
    import time

    class LastMonth(TimestampSigner):
        def get_timestamp(self):
            return int(time.time()) - 31 * 86400

    old = URLSafeTimedSerializer(app.secret_key, salt="kamengd-ref", signer=LastMonth).dumps(station["b"]["id"])
    client.set_cookie("ref", old)
    assert sale(app, buy(client, station))[1] is None                                # agents.ref_days is 30


def test_hosts_are_checked_and_bound_once(backend, app, station):
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    with app.app_context():
        b = db.session.get(Agent, station["b"]["id"])
        with pytest.raises(Conflict, match="bound to agent"):
            sites.bind_host(db.session, b, station["host"].upper() + ".", actor="t")
        for bad in ("", "localhost", "not a host", "a..b.com", "-x.example.com", "http://x.example.com",
                    "x.example.com:8080", "x" * 64 + ".com", "1.2.3.4", "_x.example.com"):
            with pytest.raises(InvalidRequest):
                sites.bind_host(db.session, b, bad, actor="t")
        set_setting(db.session, "site.url", "https://Own.Example.test/", actor="t")
        with pytest.raises(InvalidRequest, match="own address"):
            sites.bind_host(db.session, b, "own.example.test", actor="t")
        assert sites.bind_host(db.session, b, "代理.example.test", actor="t").host == "xn--mnq481g.example.test"
        db.session.rollback()
        assert sites.hosts(db.session, b.id) == []
        db.session.remove()


def test_the_host_commands(backend, make_install):
    cfg = make_install(backend)
    assert run_cli("agent", "level", "set", "--name", "L", "--discount", "5", config=cfg.path).returncode == 0
    for name in ("hua", "li"):
        assert run_cli("agent", "create", "--username", name, "--level", "L", config=cfg.path).returncode == 0
    added = run_cli("agent", "host", "add", "--username", "hua", "--host", "Hua.Example.TEST", "--json",
                    config=cfg.path)
    assert added.returncode == 0 and '"hua.example.test"' in added.out
    assert_one_line_error(run_cli("agent", "host", "add", "--username", "li", "--host", "hua.example.test",
                                  config=cfg.path), "bound to agent hua")
    assert_one_line_error(run_cli("agent", "host", "add", "--username", "li", "--host", "not a host",
                                  config=cfg.path), "not a domain")
    assert_one_line_error(run_cli("agent", "host", "remove", "--host", "li.example.test", config=cfg.path),
                          "not bound")
    assert "hua.example.test" in run_cli("agent", "host", "list", config=cfg.path).out
    assert run_cli("agent", "host", "remove", "--host", "hua.example.test", config=cfg.path).returncode == 0
    assert run_cli("agent", "host", "list", config=cfg.path).out.strip() == ""


def test_an_invite_from_an_agent_disabled_since_is_forgotten(backend, app, client, station):
    """The buyer brought by an agent that staff disabled buys from the shop as anyone; the next
    active agent's link takes the buyer over."""
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    client.get(f"/?ref={station['b']['username']}")
    with app.app_context():
        agents.set_agent_active(db.session, db.session.get(Agent, station["b"]["id"]), False, actor="t")
        db.session.commit()
        db.session.remove()
    assert sale(app, buy(client, station))[:2] == (2000, None)                     # bought all the same
    client.get(f"/?ref={station['c']['username']}")
    assert sale(app, buy(client, station))[:2] == (2000, station["c"]["id"])


def test_a_bound_host_serves_its_own_station_only(backend, app, client, station):
    host = {"Host": station["host"]}
    assert client.get(f"/s/{station['b']['username']}/", headers=host).status_code == 404
    assert client.get(f"/s/{station['c']['username']}/", headers=host).status_code == 404
    assert client.get("/", headers=host).status_code == 200


def test_a_product_in_another_currency_is_never_an_agents_sale(backend, app, client, station):
    """The agents' money is in CNY: a USD product is not sold on a station (a clear 400), and an
    invited buyer's USD order is the shop's own; its delivery books nothing for the agents."""
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    import io

    with app.app_context():
        usd = create_product(db.session, name=f"USD {secrets.token_hex(3)}", price_cents=500, currency="USD",
                             actor="t")
        import_keys(db.session, get_vault(), product_id=usd.id, actor="t",
                    fh=io.BytesIO(b"\n".join(f"USD-{secrets.token_hex(5)}".encode() for _ in range(3))))
        db.session.commit()
        product = usd.id
        db.session.remove()
    body = {"product_id": product, "quantity": 1, "email": "u@example.com", "channel": station["channel"]}
    answer = client.post(f"/s/{station['c']['username']}/api/v1/orders", json=body)
    assert answer.status_code == 400 and "USD" in answer.get_json()["error"]["message"]
    client.get(f"/?ref={station['c']['username']}")
    answer = client.post("/api/v1/orders", json=body)
    assert answer.status_code == 201
    order_no = answer.get_json()["order_no"]
    assert sale(app, order_no)[1] is None
    settle(client, app, station, order_no)
    assert sale(app, order_no)[2:] == ("delivered", {})
