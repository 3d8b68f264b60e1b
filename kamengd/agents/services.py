"""Agents, their levels and API keys; an agent's balance moved by staff.

Prices: an agent pays the product's price less its level's discount, rounded
half up to the cent, unless its level has its own price for the product
(kamengd.agents.services.level_cost: the one place).
"""
from __future__ import annotations

import re
import secrets
from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..accounts.passwords import hash_password, validate_password
from ..audit.services import record
from ..catalog.models import Product
from ..database import utcnow
from ..errors import Collector, Conflict, InvalidRequest, NotFound
from ..ledger import services as ledger
from ..money import MAX_CENTS, format_cents, parse_plain_money
from ..settings.services import get_setting
from ..validation import has_control_characters
from ..vault import Vault
from .models import Agent, AgentApiKey, AgentLevel, AgentPrice, LevelPrice

# How many levels of agents may sit below the shop is the setting agents.max_depth (default
# 3); never more than this, which also bounds every walk up the tree.
DEEPEST = 10
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{1,31}")
LEVEL_NAME_MAX = 32
_DISCOUNT_RE = re.compile(r"([0-9]{1,3})(?:\.([0-9]{1,2}))?")
_AMOUNT_RE = re.compile(r"(-?)([0-9]{1,11})(?:\.([0-9]{1,2}))?")
REFERENCE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# What an API key may do: read (products, balance, orders, statements), order (place
# orders and batches), account (withdrawals, payout accounts, prices, webhooks).
SCOPES = ("read", "order", "account")
KEY_LABEL_MAX = 64


def parse_scopes(value) -> str:
    """'read,order' or ['read', 'order'] -> the stored form (known scopes, in SCOPES order).
    None: every scope (keys issued before scopes existed could do everything)."""
    if value is None:
        return ",".join(SCOPES)
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise InvalidRequest("scopes: a list of %(known)s", known=", ".join(SCOPES))
    wanted = {i.strip() for i in items if i.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise InvalidRequest("scopes: unknown %(unknown)s (known: %(known)s)", unknown=", ".join(unknown)[:80],
                             known=", ".join(SCOPES))
    if not wanted:
        raise InvalidRequest("scopes: at least one of %(known)s", known=", ".join(SCOPES))
    return ",".join(s for s in SCOPES if s in wanted)


def parse_discount(text) -> int:
    """'12.5' (percent, 0-100, at most two decimals) -> 1250 hundredths of a percent."""
    raw = str(text).strip()
    found = _DISCOUNT_RE.fullmatch(raw)
    if not found:
        raise InvalidRequest("discount: %(raw)r is not a percentage such as 12.5", raw=raw[:40])
    value = int(found.group(1)) * 100 + int((found.group(2) or "").ljust(2, "0"))
    if value > 10000:
        raise InvalidRequest("discount: %(raw)r is more than 100", raw=raw[:40])
    return value


def format_discount(bp: int) -> str:
    return f"{bp // 100}.{bp % 100:02d}"


def parse_amount(text, *, field: str = "amount") -> int:
    """A signed amount of money, written plainly ('12.34', '-5'): cents, never zero.
    Exponents, signs other than one leading '-', more than two decimals are refused."""
    raw = str(text).strip()
    found = _AMOUNT_RE.fullmatch(raw)
    if not found:
        raise InvalidRequest("%(field)s: %(raw)r is not an amount such as 12.34 or -5", field=field, raw=raw[:40])
    cents = int(found.group(2)) * 100 + int((found.group(3) or "").ljust(2, "0"))
    if cents == 0:
        raise InvalidRequest("%(field)s: must not be zero", field=field)
    if cents >= MAX_CENTS:
        raise InvalidRequest("%(field)s: %(raw)r is too large", field=field, raw=raw[:40])
    return -cents if found.group(1) else cents


def agent_price(price_cents: int, discount_bp: int) -> int:
    """The product's price less the discount, to the cent (half up)."""
    exact = Decimal(price_cents) * (10000 - discount_bp) / Decimal(10000)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def level_cost(price_cents: int, discount_bp: int, own_price_cents: int | None = None) -> int:
    """What an agent of a level pays for a product: the level's own price for it (never above
    the shop's price, should the shop lower it later), or the shop's price less the discount.
    The one rule every price an agent sees or pays comes from."""
    if own_price_cents is None:
        return agent_price(price_cents, discount_bp)
    return min(own_price_cents, price_cents)


# -- levels -------------------------------------------------------------------

def _level_name(name) -> str:
    text = str(name or "").strip()
    if not text or len(text) > LEVEL_NAME_MAX or has_control_characters(text):
        raise InvalidRequest("level: a name of 1 to %(longest)s characters is required", longest=LEVEL_NAME_MAX)
    return text


def set_level(session: Session, *, name: str, discount, actor: str,
              source_ip: str | None = None) -> tuple[AgentLevel, bool]:
    """Create the level, or change its discount: (level, created). Audited."""
    found = Collector()
    with found:
        name = _level_name(name)
    with found:
        bp = parse_discount(discount)
    found.check()
    level = session.scalars(sa.select(AgentLevel).where(AgentLevel.name == name).with_for_update()).first()
    created = level is None
    old = None if created else level.discount_bp
    if created:
        level = AgentLevel(name=name, discount_bp=bp)
        session.add(level)
    else:
        level.discount_bp = bp
    session.flush()
    if created or old != bp:
        record(session, "agent.level.set", actor=actor, target=f"agent_level:{level.id}", source_ip=source_ip,
               details={"name": name, "discount": format_discount(bp),
                        **({} if created else {"old_discount": format_discount(old)})})
    return level, created


def set_level_price(session: Session, *, level, product_id, price, actor: str,
                    source_ip: str | None = None) -> int | None:
    """The level's own price for a product (a plain amount, at most the shop's price), or
    with `price` None its discount again. The price now in force (None: the discount). Audited."""
    the_level = get_level(session, level)
    product = session.get(Product, product_id) if isinstance(product_id, int) and 0 < product_id < 2**31 else None
    if product is None:
        raise NotFound("product %(product_id)s not found", product_id=str(product_id)[:20])
    cents = None if price is None else parse_plain_money(price, field="price", allow_zero=True)
    if cents is not None and cents > product.price_cents:
        raise InvalidRequest("price: %(price)s is above the shop's price of %(shop)s: an agent never pays more "
                             "than a buyer", price=format_cents(cents), shop=format_cents(product.price_cents))
    old = _put_price(session, LevelPrice, {"level_id": the_level.id, "product_id": product.id}, cents)
    if old != cents:
        record(session, "agent.level.price", actor=actor, target=f"agent_level:{the_level.id}", source_ip=source_ip,
               details={"level": the_level.name, "product_id": product.id,
                        "price": None if cents is None else format_cents(cents),
                        "old_price": None if old is None else format_cents(old)})
    return cents


def _put_price(session: Session, model, key: dict, cents: int | None) -> int | None:
    """Set (or, None, drop) the price row of `model` named by `key`; the price it had."""
    row = session.scalar(sa.select(model).filter_by(**key).with_for_update())
    old = None if row is None else row.price_cents
    if cents is None and row is not None:
        session.delete(row)
    elif cents is not None and row is None:
        session.add(model(**key, price_cents=cents))
    elif cents is not None:
        row.price_cents = cents
    session.flush()
    return old


def agent_cost(session: Session, agent: Agent, product: Product) -> int:
    """What `agent` pays for `product` now (its level's price or discount)."""
    level = session.get(AgentLevel, agent.level_id)
    return level_cost(product.price_cents, level.discount_bp, level_prices(session, level.id).get(product.id))


def station_price(price_cents: int, discount_bp: int, level_own_cents: int | None, own_cents: int | None) -> int:
    """The one rule of what an agent's sub-station asks a unit: its own price, the shop's
    price without one, and never below its cost (should its cost rise after it set its price)."""
    return max(price_cents if own_cents is None else own_cents,
               level_cost(price_cents, discount_bp, level_own_cents))


def set_selling_price(session: Session, agent: Agent, *, product_id, price, actor: str,
                      source_ip: str | None = None) -> int | None:
    """The agent's own selling price for a product (a plain amount, never below its cost), or
    with `price` None the shop's price again. The price now set (None: the shop's). Audited."""
    require_agent(agent, "a selling price")
    product = session.get(Product, product_id) if isinstance(product_id, int) and not isinstance(
        product_id, bool) and 0 < product_id < 2**31 else None
    if product is None or not product.is_active:
        raise NotFound("product not found")
    cents = None if price is None else parse_plain_money(price, field="price")
    if cents is not None:
        cost = agent_cost(session, agent, product)
        if cents < cost:
            raise InvalidRequest("price: %(price)s is below your cost of %(cost)s for this product",
                                 price=format_cents(cents), cost=format_cents(cost))
    old = _put_price(session, AgentPrice, {"agent_id": agent.id, "product_id": product.id}, cents)
    if old != cents:
        record(session, "agent.price.set", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
               details={"product_id": product.id, "price": None if cents is None else format_cents(cents),
                        "old_price": None if old is None else format_cents(old)})
    return cents


def selling_prices(session: Session, agent: Agent) -> list[dict]:
    """The agent's products with its cost and its sub-station's price."""
    own = dict(session.execute(sa.select(AgentPrice.product_id, AgentPrice.price_cents)
                               .where(AgentPrice.agent_id == agent.id)).all())
    level = session.get(AgentLevel, agent.level_id)
    level_own = level_prices(session, level.id)
    products = session.scalars(sa.select(Product).where(Product.is_active.is_(True))
                               .order_by(Product.sort_order, Product.id)).all()
    rows = []
    for p in products:
        cost = level_cost(p.price_cents, level.discount_bp, level_own.get(p.id))
        price = station_price(p.price_cents, level.discount_bp, level_own.get(p.id), own.get(p.id))
        rows.append({"product_id": p.id, "name": p.name, "shop_price": format_cents(p.price_cents),
                     "cost": format_cents(cost), "price": format_cents(price), "own": p.id in own,
                     "margin": format_cents(price - cost)})
    return rows


def station_prices(session: Session, agent: Agent, products) -> dict[int, int]:
    """{product id: cents} the agent's sub-station asks for each of `products`."""
    own = dict(session.execute(sa.select(AgentPrice.product_id, AgentPrice.price_cents)
                               .where(AgentPrice.agent_id == agent.id)).all())
    level = session.get(AgentLevel, agent.level_id)
    level_own = level_prices(session, level.id)
    return {p.id: station_price(p.price_cents, level.discount_bp, level_own.get(p.id), own.get(p.id))
            for p in products}


def level_prices(session: Session, level_id: int) -> dict[int, int]:
    """{product id: cents} of the level's own prices."""
    return dict(session.execute(sa.select(LevelPrice.product_id, LevelPrice.price_cents)
                                .where(LevelPrice.level_id == level_id)).all())


def get_level(session: Session, name: str) -> AgentLevel:
    level = session.scalar(sa.select(AgentLevel).where(AgentLevel.name == str(name).strip()))
    if level is None:
        raise NotFound("no agent level named %(name)r (create it with `kamengd agent level set`)", name=str(name))
    return level


def list_levels(session: Session) -> list[tuple[AgentLevel, int]]:
    """(level, agents at it), by discount."""
    counts = dict(session.execute(sa.select(Agent.level_id, sa.func.count()).group_by(Agent.level_id)).all())
    levels = session.scalars(sa.select(AgentLevel).order_by(AgentLevel.discount_bp, AgentLevel.id)).all()
    return [(level, counts.get(level.id, 0)) for level in levels]


# -- agents -------------------------------------------------------------------

def normal_username(username) -> str:
    return str(username or "").strip().lower()


def get_agent(session: Session, username, *, for_update: bool = False) -> Agent:
    query = sa.select(Agent).where(Agent.username == normal_username(username))
    if for_update:
        query = query.with_for_update()
    agent = session.scalars(query).first()
    if agent is None:
        raise NotFound("no agent named %(username)r", username=str(username)[:64])
    return agent


def create_agent(session: Session, *, username: str, level: str, actor: str, parent: str | None = None,
                 password: str | None = None, source_ip: str | None = None) -> Agent:
    """A new agent under the shop or under `parent`, with its ledger accounts. Audited."""
    name = normal_username(username)
    found = Collector()
    if not USERNAME_RE.fullmatch(name):
        found.add(InvalidRequest("username: 2-32 letters, digits, '_' or '-', starting with a letter or digit"))
    the_level = parent_agent = None
    try:
        the_level = get_level(session, level)
    except NotFound as exc:
        found.add(exc)
    if parent:
        try:
            parent_agent = get_agent(session, parent)
        except NotFound as exc:
            found.add(exc)
    if password is not None:
        with found:
            validate_password(password)
    found.check()
    if parent_agent is not None:
        if parent_agent.is_member:
            raise InvalidRequest("parent: %(username)r is a plain member, not an agent", username=parent_agent.username)
        if not parent_agent.is_active:
            raise InvalidRequest("parent: agent %(username)r is disabled", username=parent_agent.username)
        if parent_agent.depth >= get_setting(session, "agents.max_depth"):
            raise InvalidRequest("parent: agent %(username)r is %(depth)s levels below the shop, the most "
                                 "there may be", username=parent_agent.username, depth=parent_agent.depth)
    if session.scalar(sa.select(Agent.id).where(Agent.username == name)) is not None:
        raise Conflict("agent %(username)r already exists", username=name)
    agent = Agent(username=name, level_id=the_level.id, parent_id=parent_agent.id if parent_agent else None,
                  depth=parent_agent.depth + 1 if parent_agent else 1,
                  password_hash=hash_password(password) if password is not None else None)
    session.add(agent)
    session.flush()
    ledger.open_agent_accounts(session, agent.id)
    record(session, "agent.create", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"username": name, "level": the_level.name,
                    "parent": parent_agent.username if parent_agent else None})
    return agent


def create_member(session: Session, *, username: str, actor: str, password: str | None = None,
                  source_ip: str | None = None) -> Agent:
    """A plain member: signs in to the portal, may hold a balance (its ledger accounts are
    opened), has no level, sub-agents, sub-station or API key until promoted. Audited."""
    name = normal_username(username)
    found = Collector()
    if not USERNAME_RE.fullmatch(name):
        found.add(InvalidRequest("username: 2-32 letters, digits, '_' or '-', starting with a letter or digit"))
    if password is not None:
        with found:
            validate_password(password)
    found.check()
    if session.scalar(sa.select(Agent.id).where(Agent.username == name)) is not None:
        raise Conflict("agent %(username)r already exists", username=name)
    member = Agent(username=name, kind="member", level_id=None, parent_id=None, depth=1,
                   password_hash=hash_password(password) if password is not None else None)
    session.add(member)
    session.flush()
    ledger.open_agent_accounts(session, member.id)
    record(session, "member.create", actor=actor, target=f"agent:{member.id}", source_ip=source_ip,
           details={"username": name})
    return member


def promote_member(session: Session, member: Agent, *, level: str, actor: str, parent: str | None = None,
                   source_ip: str | None = None) -> Agent:
    """A plain member becomes an agent of `level` (under `parent`, or the shop). Audited."""
    if not member.is_member:
        raise InvalidRequest("%(username)s is an agent already", username=member.username)
    the_level = get_level(session, level)
    parent_agent = get_agent(session, parent) if parent else None
    if parent_agent is not None:
        if parent_agent.is_member or not parent_agent.is_active:
            raise InvalidRequest("parent: %(username)r is not an active agent", username=parent_agent.username)
        if parent_agent.depth >= get_setting(session, "agents.max_depth"):
            raise InvalidRequest("parent: agent %(username)r is %(depth)s levels below the shop, the most "
                                 "there may be", username=parent_agent.username, depth=parent_agent.depth)
    done = session.execute(sa.update(Agent).where(Agent.id == member.id, Agent.kind == "member").values(
        kind="agent", level_id=the_level.id, parent_id=parent_agent.id if parent_agent else None,
        depth=parent_agent.depth + 1 if parent_agent else 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)).rowcount
    session.refresh(member)
    if not done:
        raise Conflict("%(username)s changed meanwhile: try again", username=member.username)
    record(session, "member.promote", actor=actor, target=f"agent:{member.id}", source_ip=source_ip,
           details={"username": member.username, "level": the_level.name,
                    "parent": parent_agent.username if parent_agent else None})
    return member


def require_agent(agent: Agent, what: str) -> None:
    """A plain member has no level to buy or sell at: refused, naming what it asked for."""
    if agent.is_member:
        raise InvalidRequest("%(username)s is a plain member: %(what)s is for agents (promote it first)",
                             username=agent.username, what=what)


def agent_summary(session: Session, agent: Agent) -> dict:
    level = session.get(AgentLevel, agent.level_id) if agent.level_id is not None else None
    parent = session.get(Agent, agent.parent_id) if agent.parent_id else None
    money = ledger.balances(session, agent.id)
    return {"id": agent.id, "username": agent.username, "kind": agent.kind,
            "level": level.name if level else None,
            "discount": format_discount(level.discount_bp) if level else None,
            "parent": parent.username if parent else None,
            "depth": agent.depth, "active": agent.is_active, "level_pinned": agent.level_pinned,
            "balance": format_cents(money["available"]), "pending": format_cents(money["pending"]),
            "held": format_cents(money["held"]), "debt": format_cents(-money["debt"]),
            "currency": ledger.DEFAULT_CURRENCY,
            "created_at": agent.created_at.isoformat(timespec="seconds") + "Z"}


def list_agents(session: Session) -> list[Agent]:
    return session.scalars(sa.select(Agent).order_by(Agent.id)).all()


# -- API keys -----------------------------------------------------------------

def secret_context(key_id: str) -> str:
    return f"agent-api:{key_id}"


def issue_api_key(session: Session, vault: Vault, agent: Agent, *, actor: str,
                  source_ip: str | None = None, scopes=None, label: str = "") -> tuple[str, str]:
    """A new key pair: (key_id, secret). The secret is returned this once; the database
    keeps it sealed with the data key. Audited (without the secret). `scopes`: what the
    key may do (default: everything); `label`: the agent's name for it."""
    scopes = parse_scopes(scopes)
    label = str(label or "").strip()
    if len(label) > KEY_LABEL_MAX or has_control_characters(label):
        raise InvalidRequest("label: at most %(max)s characters, no control characters", max=KEY_LABEL_MAX)
    if not agent.is_active:
        raise InvalidRequest("agent %(username)r is disabled", username=agent.username)
    require_agent(agent, "an API key")
    key_id = "ak_" + secrets.token_hex(12)
    secret = secrets.token_urlsafe(32)
    nonce, ciphertext, version = vault.encrypt_secret(secret_context(key_id), secret.encode())
    session.add(AgentApiKey(agent_id=agent.id, key_id=key_id, secret_nonce=nonce, secret_ciphertext=ciphertext,
                            secret_key_version=version, scopes=scopes, label=label))
    session.flush()
    record(session, "agent.apikey.issue", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"key_id": key_id, "scopes": scopes, **({"label": label} if label else {})})
    return key_id, secret


def list_api_keys(session: Session, agent: Agent) -> list[AgentApiKey]:
    return session.scalars(sa.select(AgentApiKey).where(AgentApiKey.agent_id == agent.id)
                           .order_by(AgentApiKey.id)).all()


def revoke_api_key(session: Session, key_id: str, *, actor: str, source_ip: str | None = None,
                   agent_id: int | None = None) -> AgentApiKey:
    """The key stops working at once (its next request: 401). Audited; revoking twice is refused.
    With `agent_id` (an agent revoking its own), another agent's key is not found."""
    key = session.scalars(sa.select(AgentApiKey).where(AgentApiKey.key_id == str(key_id)[:32])
                          .with_for_update()).first()
    if key is None or (agent_id is not None and key.agent_id != agent_id):
        raise NotFound("no API key %(key_id)r", key_id=str(key_id)[:32])
    if key.revoked_at is not None:
        raise Conflict("API key %(key_id)s was revoked before", key_id=key.key_id)
    key.revoked_at = utcnow()
    session.flush()
    record(session, "agent.apikey.revoke", actor=actor, target=f"agent:{key.agent_id}", source_ip=source_ip,
           details={"key_id": key.key_id})
    return key


def set_agent_active(session: Session, agent: Agent, active: bool, *, actor: str,
                     source_ip: str | None = None) -> bool:
    """Disable an agent (its keys stop working, its money stays) or enable it again: whether
    anything changed. Audited."""
    if agent.is_active == active:
        return False
    agent.is_active = active
    if not active:   # its portal sessions end, and stay ended should it be enabled again
        agent.session_epoch = (agent.session_epoch or 0) + 1
    session.flush()
    record(session, "agent.enable" if active else "agent.disable", actor=actor, target=f"agent:{agent.id}",
           source_ip=source_ip, details={"username": agent.username})
    return True


# -- money moved by staff -------------------------------------------------------

def credit_balance(session: Session, agent: Agent, amount_cents: int, *, reason: str, actor: str,
                   reference: str | None = None, source_ip: str | None = None) -> ledger.Booking:
    """Credit (or, negative, debit) an agent's available balance; never below zero.

    `reference` names the credit: given again, the same credit is not booked twice (a
    script may retry); without one each call is a credit of its own. Audited."""
    reason = str(reason or "").strip()
    if not reason or len(reason) > 200 or has_control_characters(reason):
        raise InvalidRequest("reason: 1 to 200 characters on one line are required")
    if reference is not None and not REFERENCE_RE.fullmatch(reference):
        raise InvalidRequest("reference: 1 to 64 letters, digits or _ . : -")
    cause = f"credit:{reference}" if reference is not None else f"credit:{secrets.token_hex(12)}"
    mine = ledger.agent_refs(session, agent.id)
    earlier = ledger.booked_before(session, cause) if reference is not None else None
    if earlier is not None:   # a retry: the same credit, once (however its debt was repaid then)
        if sum(earlier.amounts.get(a.id, 0) for a in mine.values()) != amount_cents:
            raise Conflict("reference %(reference)s was used for another credit", reference=reference)
        return earlier
    shop = ledger.shop_ref(session, "shop:adjustments", mine["available"].currency)
    # A credit repays what the agent owes first; a debit takes only from the spendable balance.
    legs = ledger.agent_credit_legs(session, agent.id, amount_cents) if amount_cents > 0 else \
        [(mine["available"], amount_cents)]
    booking = ledger.post(session, cause=cause, kind="credit" if amount_cents > 0 else "debit",
                          legs=[*legs, (shop, -amount_cents)], actor=actor, memo=reason)
    if booking.booked:
        record(session, "balance.credit", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
               details={"username": agent.username, "amount": format_cents(amount_cents), "reason": reason,
                        "cause": cause})
    elif sum(booking.amounts.get(a.id, 0) for a in mine.values()) != amount_cents:
        raise Conflict("reference %(reference)s was used for another credit", reference=reference)
    return booking
