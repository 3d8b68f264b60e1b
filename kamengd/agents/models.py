"""Agents (代理): accounts that buy at their level's price and resell.

The shop is the root of a tree; each agent has at most one parent agent and
sits `depth` levels below the shop (1: directly under it).
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, FixedBinary, UTCDateTime, utcnow
from ..extensions import db


class AgentLevel(db.Model):
    __tablename__ = "agent_levels"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(32), unique=True)
    # Off the shop's price, in hundredths of a percent: 1250 = 12.50 %.
    discount_bp: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (sa.CheckConstraint("discount_bp BETWEEN 0 AND 10000", name="discount_range"),)


class Agent(db.Model):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # None: no portal sign-in yet (the API works with a key).
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    # "agent": buys at its level's price and resells; "member": a plain account (no level, no
    # sub-agents, no sub-station, no API key) that signs in to the portal and may hold a balance.
    kind: Mapped[str] = mapped_column(sa.String(8), default="agent", server_default="agent")
    level_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agent_levels.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    depth: Mapped[int] = mapped_column(sa.SmallInteger)
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    # A level staff set by hand stays; automatic level rules leave it alone.
    level_pinned: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The portal's sign-in, by the staff rules (kamengd.accounts.auth): the TOTP secret is
    # sealed with the data key (context "agent-totp:<id>"), a code works once (its step is
    # kept), and a new epoch ends every portal session of the agent.
    totp_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    totp_nonce: Mapped[bytes | None] = mapped_column(FixedBinary(12))
    totp_key_version: Mapped[int | None] = mapped_column(sa.SmallInteger)
    totp_enabled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    session_epoch: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Its sub-station (分站): the name, notice and contact its buyers see (empty: the shop's).
    site_title: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    site_notice: Mapped[str] = mapped_column(sa.String(2000), default="", server_default="")
    site_contact: Mapped[str] = mapped_column(sa.String(200), default="", server_default="")
    # Keys were put in its stock pool (库存池): its orders look there first. Never cleared by
    # a sale (a look into an empty pool is cheap); set by kamengd.inventory.pools.
    has_pool: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    __table_args__ = (
        sa.CheckConstraint("depth >= 1", name="depth_positive"),
        sa.CheckConstraint("kind IN ('agent', 'member')", name="kind_known"),
        sa.CheckConstraint("kind = 'member' OR level_id IS NOT NULL", name="agent_has_level"),
    )

    @property
    def is_member(self) -> bool:
        return self.kind == "member"


class AgentHost(db.Model):
    """A host name (a domain or subdomain) bound to an agent's sub-station: a request whose
    Host is this one is served as that agent's storefront. One agent per host."""
    __tablename__ = "agent_hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    host: Mapped[str] = mapped_column(sa.String(253), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AgentSession(db.Model):
    """One signed-in portal session; the cookie holds a random token, only its SHA-256 is here."""
    __tablename__ = "agent_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[bytes] = mapped_column(FixedBinary(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    ip: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(200))
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AgentRecoveryCode(db.Model):
    """One-time recovery codes of an agent's two-factor sign-in; only a SHA-256 of each."""
    __tablename__ = "agent_recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[bytes] = mapped_column(FixedBinary(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AgentApiKey(db.Model):
    """A key pair of the agent API: the id is public, the secret is kept sealed with the
    data key (the server needs it to check HMAC signatures) and shown once."""
    __tablename__ = "agent_api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    key_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    secret_ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    secret_nonce: Mapped[bytes] = mapped_column(FixedBinary(12))
    secret_key_version: Mapped[int] = mapped_column(sa.SmallInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # What the key may do (kamengd.agents.scopes): read, order, account; comma-separated.
    scopes: Mapped[str] = mapped_column(sa.String(40), default="read,order,account",
                                        server_default="read,order,account")
    label: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")


class AgentBatch(db.Model):
    """A batch of orders an agent placed at once (the API's orders/batch, or a file uploaded
    in the portal). Each line is its own order, placed in its own transaction; the batch
    answers per line. Sent again with the same Idempotency-Key it places only the lines not
    done yet and answers the same; with another body behind the key it is refused."""
    __tablename__ = "agent_batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"))
    idempotency_key: Mapped[str] = mapped_column(sa.String(64))
    request_hash: Mapped[bytes] = mapped_column(FixedBinary(32))
    source: Mapped[str] = mapped_column(sa.String(8))   # api | upload
    filename: Mapped[str] = mapped_column(sa.String(200), default="", server_default="")
    line_count: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.UniqueConstraint("agent_id", "idempotency_key", name="uq_agent_batches_agent_key"),)


class AgentBatchLine(db.Model):
    """One line of a batch and what became of it: its order (written in the same transaction
    as the order) or the error that refused it."""
    __tablename__ = "agent_batch_lines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.ForeignKey("agent_batches.id", ondelete="CASCADE"))
    line_no: Mapped[int] = mapped_column(sa.Integer)
    product_id: Mapped[int] = mapped_column(sa.Integer)
    quantity: Mapped[int] = mapped_column(sa.Integer)
    ref: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"))
    error_code: Mapped[str | None] = mapped_column(sa.String(32))
    error: Mapped[str | None] = mapped_column(sa.String(300))

    __table_args__ = (sa.UniqueConstraint("batch_id", "line_no", name="uq_agent_batch_lines_batch_line"),)


class AgentWebhook(db.Model):
    """Where an agent hears of its orders and balance (kamengd.agents.webhooks): a URL and a
    secret of its own, sealed like API secrets and shown once. `ledger_cursor`: the last
    ledger entry announced as balance.changed."""
    __tablename__ = "agent_webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    url: Mapped[str] = mapped_column(sa.String(500))
    events: Mapped[str] = mapped_column(sa.String(200), default="*", server_default="*")
    secret_ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    secret_nonce: Mapped[bytes] = mapped_column(FixedBinary(12))
    secret_key_version: Mapped[int] = mapped_column(sa.SmallInteger)
    ledger_cursor: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ApiNonce(db.Model):
    """Nonces of signed agent API requests seen within the time window: a request replayed
    (captured and sent again) finds its nonce here and is refused."""
    __tablename__ = "agent_api_nonces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key_id: Mapped[str] = mapped_column(sa.String(32))
    nonce: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    __table_args__ = (sa.UniqueConstraint("key_id", "nonce", name="uq_agent_api_nonces_key_nonce"),)


class NewBuyerReward(db.Model):
    """A new buyer (an e-mail, case-folded) whose first order an agent was rewarded for:
    the key makes it once per buyer, whichever order and server deliver it."""
    __tablename__ = "new_buyer_rewards"

    email_folded: Mapped[str] = mapped_column(sa.String(254), primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"))
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Commission(db.Model):
    """What one ancestor earned on one delivered order: booked pending with the delivery,
    available after the hold, reversed if the order is refunded. One row per order and
    agent (the unique key is what makes it once, whatever delivers the order again)."""
    __tablename__ = "commissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"))
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"))
    # From which agent's price this one's margin was taken (None: the buyer's price).
    below_agent_id: Mapped[int | None] = mapped_column(sa.Integer)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[str] = mapped_column(sa.String(16))   # pending, available, reversed
    booked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    release_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    released_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reversed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Of a reversal after the hold: the part the agent's available balance did not cover.
    debt_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))

    __table_args__ = (
        sa.UniqueConstraint("order_id", "agent_id", name="uq_commissions_order_agent"),
        sa.Index("ix_commissions_status_release", "status", "release_at"),
        sa.Index("ix_commissions_agent", "agent_id", "id"),
        sa.CheckConstraint("amount_cents > 0", name="positive"),
    )


class PayoutAccount(db.Model):
    """Where an agent's withdrawals are paid: an Alipay account, a bank card or a USDT address."""
    __tablename__ = "payout_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    account: Mapped[str] = mapped_column(sa.String(128))
    holder: Mapped[str] = mapped_column(sa.String(64))
    bank: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Removed accounts stay: the withdrawals paid to them name them.
    removed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Withdrawal(db.Model):
    """An agent's request to be paid out. The amount is held in the agent's ledger at once;
    finance pays it (a reference) or rejects it (the amount goes back)."""
    __tablename__ = "withdrawals"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"))
    payout_account_id: Mapped[int] = mapped_column(sa.ForeignKey("payout_accounts.id"))
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)    # held, taken from the balance
    fee_cents: Mapped[int] = mapped_column(sa.BigInteger)       # kept by the shop on payment
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[str] = mapped_column(sa.String(16))          # requested, paid, rejected
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reviewed_by: Mapped[str | None] = mapped_column(sa.String(80))
    reference: Mapped[str | None] = mapped_column(sa.String(128))
    reason: Mapped[str | None] = mapped_column(sa.String(200))
    # The client's name for the request: sent again (a retry), the same withdrawal, once.
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(64))

    __table_args__ = (
        sa.UniqueConstraint("agent_id", "idempotency_key", name="uq_withdrawals_agent_idempotency"),
        sa.Index("ix_withdrawals_agent", "agent_id", "requested_at"),
        sa.Index("ix_withdrawals_status", "status", "id"),
        sa.CheckConstraint("amount_cents > 0", name="positive"),
        sa.CheckConstraint("fee_cents >= 0 AND fee_cents < amount_cents", name="fee_range"),
    )


class LevelRule(db.Model):
    """An automatic level: agents whose delivered sales of the last `days` days reach
    `min_sales_cents` get `level_id` (the highest such rule wins; a pinned agent keeps its
    level; an agent no rule reaches keeps the level it has)."""
    __tablename__ = "agent_level_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    level_id: Mapped[int] = mapped_column(sa.ForeignKey("agent_levels.id"), unique=True)
    min_sales_cents: Mapped[int] = mapped_column(sa.BigInteger)
    days: Mapped[int] = mapped_column(sa.SmallInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.CheckConstraint("min_sales_cents >= 0", name="sales_not_negative"),
        sa.CheckConstraint("days BETWEEN 1 AND 366", name="days_range"),
    )


class LevelChange(db.Model):
    """Each change of an agent's level, by staff or by a rule, with its reason."""
    __tablename__ = "agent_level_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"))
    from_level_id: Mapped[int] = mapped_column(sa.ForeignKey("agent_levels.id"))
    to_level_id: Mapped[int] = mapped_column(sa.ForeignKey("agent_levels.id"))
    reason: Mapped[str] = mapped_column(sa.String(200))
    actor: Mapped[str] = mapped_column(sa.String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (sa.Index("ix_agent_level_changes_agent", "agent_id", "id"),)


class LevelPrice(db.Model):
    """A level's own price for one product, instead of its discount off the shop's price."""
    __tablename__ = "agent_level_prices"

    id: Mapped[int] = mapped_column(primary_key=True)
    level_id: Mapped[int] = mapped_column(sa.ForeignKey("agent_levels.id"))
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"), index=True)
    price_cents: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("level_id", "product_id", name="uq_agent_level_prices_level_product"),
        sa.CheckConstraint("price_cents >= 0", name="price_not_negative"),
    )


class AgentPrice(db.Model):
    """An agent's own selling price for a product on its sub-station (never below its cost)."""
    __tablename__ = "agent_prices"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"))
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"), index=True)
    price_cents: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("agent_id", "product_id", name="uq_agent_prices_agent_product"),
        sa.CheckConstraint("price_cents > 0", name="positive"),
    )
