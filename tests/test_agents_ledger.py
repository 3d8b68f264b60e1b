"""Agents, levels and the ledger of their money (W2), as services on both databases.

Every movement is booked once per cause, its entries sum to zero, a balance
never goes below zero (not even with many debits at once), and
`ledger.verify` notices a balance that differs from its entries.
"""
import secrets
import threading

import pytest
import sqlalchemy as sa

from kamengd.agents import services as agents
from kamengd.errors import Conflict, InsufficientBalance, InvalidRequest, NotFound
from kamengd.ledger import services as ledger
from kamengd.ledger.models import LedgerAccount, LedgerEntry, LedgerTransaction


@pytest.mark.parametrize("text, cents", [("12.34", 1234), ("-5", -500), ("0.01", 1), ("-0.5", -50),
                                         (" 7 ", 700), ("99999999999.99", 9999999999999)])
def test_amounts_are_written_plainly(text, cents):
    assert agents.parse_amount(text) == cents


@pytest.mark.parametrize("text", ["1e3", "-0", "0", "0.00", "0.001", "+5", "--5", "1,000", "１２", "", "abc",
                                  "1 2", "NaN", "Infinity", "123456789012", "5.", ".5", "0x10", "1_000"])
def test_amounts_that_are_refused(text):
    with pytest.raises(InvalidRequest, match="amount"):
        agents.parse_amount(text)


@pytest.mark.parametrize("text, bp", [("0", 0), ("12.5", 1250), ("100", 10000), ("7.05", 705)])
def test_discounts(text, bp):
    assert agents.parse_discount(text) == bp


@pytest.mark.parametrize("text", ["-1", "100.01", "101", "12.345", "1e1", "", "ten", "50%", "１０"])
def test_discounts_that_are_refused(text):
    with pytest.raises(InvalidRequest, match="discount"):
        agents.parse_discount(text)


@pytest.mark.parametrize("price, bp, cents", [(990, 1000, 891), (995, 1250, 871), (999, 5000, 500),
                                              (1, 5000, 1), (1, 5100, 0), (1000, 0, 1000), (1000, 10000, 0),
                                              (333, 3333, 222)])
def test_the_agents_price_is_rounded_half_up(price, bp, cents):
    # 995 less 12.5 % = 870.625 -> 871; 999 less 50 % = 499.5 -> 500; 333 less 33.33 % = 222.0111 -> 222
    assert agents.agent_price(price, bp) == cents


def name(prefix="ag"):
    return f"{prefix}-{secrets.token_hex(4)}"


def test_a_tree_of_agents_three_levels_deep(backend, session):
    gold, created = agents.set_level(session, name=name("gold"), discount="12.5", actor="t")
    assert created and gold.discount_bp == 1250
    again, created = agents.set_level(session, name=gold.name, discount="15", actor="t")
    assert again.id == gold.id and not created and gold.discount_bp == 1500
    top = agents.create_agent(session, username=name("Top").upper(), level=gold.name, actor="t")
    assert top.username == top.username.lower() and top.depth == 1 and top.parent_id is None
    mid = agents.create_agent(session, username=name(), level=gold.name, parent=top.username, actor="t")
    low = agents.create_agent(session, username=name(), level=gold.name, parent=mid.username, actor="t",
                              password="long enough password")
    assert (mid.depth, low.depth, low.parent_id) == (2, 3, mid.id) and low.password_hash.startswith("$argon2")
    with pytest.raises(InvalidRequest, match="3 levels below the shop"):
        agents.create_agent(session, username=name(), level=gold.name, parent=low.username, actor="t")
    with pytest.raises(Conflict, match="already exists"):
        agents.create_agent(session, username=top.username, level=gold.name, actor="t")
    # Every mistake at once: the name, the level, the parent, the password.
    with pytest.raises(InvalidRequest) as caught:
        agents.create_agent(session, username="x", level="no-such-level", parent="nobody", password="short",
                            actor="t")
    said = str(caught.value)
    assert "username" in said and "no-such-level" in said and "nobody" in said and "password" in said
    summary = agents.agent_summary(session, low)
    assert summary["parent"] == mid.username and summary["balance"] == "0.00" and summary["discount"] == "15.00"
    # Each agent has its three accounts, at zero.
    kinds = session.scalars(sa.select(LedgerAccount.kind).where(LedgerAccount.agent_id == low.id)).all()
    assert sorted(kinds) == ["available", "debt", "held", "pending"]


@pytest.fixture
def agent(session):
    level, _ = agents.set_level(session, name=name("lv"), discount="10", actor="t")
    return agents.create_agent(session, username=name(), level=level.name, actor="t")


def entries_of(session, agent_id):
    return session.execute(sa.select(LedgerEntry.amount_cents, LedgerEntry.balance_after_cents)
                           .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
                           .where(LedgerAccount.agent_id == agent_id).order_by(LedgerEntry.id)).all()


def test_credits_and_debits_are_ledger_entries(backend, session, agent):
    first = agents.credit_balance(session, agent, 1000, reason="top-up", actor="t")
    agents.credit_balance(session, agent, -250, reason="correction", actor="t")
    assert ledger.balances(session, agent.id)["available"] == 750
    assert entries_of(session, agent.id) == [(1000, 1000), (-250, 750)]
    # Each movement has its counter-entry on the shop's side, summing to zero.
    legs = session.execute(sa.select(LedgerEntry.amount_cents).where(
        LedgerEntry.transaction_id == first.transaction_id)).scalars().all()
    assert sorted(legs) == [-1000, 1000]
    # The shop's side keeps no running balance (every agent's order would queue on its row).
    shop = ledger.shop_account(session, "shop:adjustments")
    shop_after = session.scalars(sa.select(LedgerEntry.balance_after_cents)
                                 .where(LedgerEntry.account_id == shop.id)).all()
    assert shop.balance_cents == 0 and shop_after and set(shop_after) == {None}
    with pytest.raises(InsufficientBalance):
        agents.credit_balance(session, agent, -751, reason="too much", actor="t")
    assert ledger.balances(session, agent.id)["available"] == 750
    assert len(entries_of(session, agent.id)) == 2          # the refused debit left nothing
    checked, problems = ledger.verify(session)
    assert checked >= 3 and problems == []


def test_a_reference_books_once(backend, session, agent):
    ref = f"ref-{secrets.token_hex(4)}"
    first = agents.credit_balance(session, agent, 500, reason="promo", actor="t", reference=ref)
    again = agents.credit_balance(session, agent, 500, reason="promo", actor="t", reference=ref)
    assert first.booked and not again.booked and again.transaction_id == first.transaction_id
    assert ledger.balances(session, agent.id)["available"] == 500
    with pytest.raises(Conflict, match="another credit"):
        agents.credit_balance(session, agent, 600, reason="promo", actor="t", reference=ref)
    for bad in ("", "a b", "x" * 65, "中文"):
        with pytest.raises(InvalidRequest, match="reference"):
            agents.credit_balance(session, agent, 1, reason="r", actor="t", reference=bad)
    for bad in ("", " ", "a\nb", "x" * 201):
        with pytest.raises(InvalidRequest, match="reason"):
            agents.credit_balance(session, agent, 1, reason=bad, actor="t")
    assert ledger.balances(session, agent.id)["available"] == 500


def test_the_database_itself_refuses_a_negative_balance(backend, session, agent):
    from sqlalchemy.exc import DBAPIError   # SQLite: IntegrityError; MariaDB: error 4025

    account = ledger.account_by_name(session, ledger.agent_account_name(agent.id, "available"))
    with pytest.raises(DBAPIError, match="not_negative"), session.begin_nested():
        session.execute(sa.update(LedgerAccount).where(LedgerAccount.id == account.id).values(balance_cents=-1))


def test_verify_names_a_balance_its_entries_do_not_explain(backend, session, agent):
    agents.credit_balance(session, agent, 300, reason="r", actor="t")
    account = ledger.account_by_name(session, ledger.agent_account_name(agent.id, "available"))
    session.execute(sa.update(LedgerAccount).where(LedgerAccount.id == account.id).values(balance_cents=301))
    _checked, problems = ledger.verify(session)
    assert any(account.name in p and "3.01" in p and "3.00" in p for p in problems), problems
    session.execute(sa.update(LedgerAccount).where(LedgerAccount.id == account.id).values(balance_cents=300))
    # A movement whose entries do not sum to zero.
    txn = session.scalars(sa.select(LedgerTransaction).order_by(LedgerTransaction.id.desc())).first()
    entry = session.scalars(sa.select(LedgerEntry).where(LedgerEntry.transaction_id == txn.id,
                                                         LedgerEntry.account_id != account.id)).one()
    entry.amount_cents -= 1
    session.flush()
    _checked, problems = ledger.verify(session)
    assert any(txn.cause in p and "not 0" in p for p in problems), problems


def test_post_refuses_what_is_not_a_movement(backend, session, agent):
    account = ledger.account_by_name(session, ledger.agent_account_name(agent.id, "available"))
    shop = ledger.shop_account(session, "shop:adjustments")
    for legs in ([(account, 5), (shop, -4)], [(account, 0), (shop, 0)], [(account, 5), (account, -5)]):
        with pytest.raises(ValueError):
            ledger.post(session, cause=f"test:{secrets.token_hex(4)}", kind="t", legs=legs, actor="t")
    with pytest.raises(TypeError):
        ledger.post(session, cause="test:float", kind="t", legs=[(account, 1.5), (shop, -1.5)], actor="t")
    with pytest.raises(ValueError):
        ledger.post(session, cause="no cause", kind="t", legs=[(account, 1), (shop, -1)], actor="t")


def test_unknown_agents_and_levels(backend, session):
    with pytest.raises(NotFound):
        agents.get_agent(session, "nobody-here")
    with pytest.raises(NotFound, match="agent level set"):
        agents.get_level(session, "no-such-level")


def test_many_debits_at_once_never_overdraw(backend, app):
    """40 debits of 1.00 race for a balance of 15.00 from their own sessions: exactly 15
    are booked, the balance ends at 0.00, and the books add up."""
    from kamengd.extensions import db

    with app.app_context():
        level, _ = agents.set_level(db.session, name=name("race"), discount="0", actor="t")
        racer = agents.create_agent(db.session, username=name("racer"), level=level.name, actor="t")
        agents.credit_balance(db.session, racer, 1500, reason="float", actor="t")
        db.session.commit()
        racer_id = racer.id
        db.session.remove()

    outcomes, start = [], threading.Barrier(8)

    def debit(n):
        from kamengd.agents.models import Agent

        with app.app_context():
            start.wait()
            for i in range(5):
                try:
                    agents.credit_balance(db.session, db.session.get(Agent, racer_id), -100, reason="spend",
                                          actor="t", reference=f"race-{racer_id}-{n}-{i}")
                    db.session.commit()
                    outcomes.append("ok")
                except InsufficientBalance:
                    db.session.rollback()
                    outcomes.append("refused")
                except Exception as exc:   # a deadlock would be a defect: count it
                    db.session.rollback()
                    outcomes.append(f"error {exc.__class__.__name__}")
                finally:
                    db.session.remove()

    threads = [threading.Thread(target=debit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(outcomes)) == ["ok", "refused"], outcomes
    assert outcomes.count("ok") == 15 and outcomes.count("refused") == 25
    with app.app_context():
        assert ledger.balances(db.session, racer_id)["available"] == 0
        assert ledger.verify(db.session)[1] == []
        db.session.remove()


def test_the_trees_depth_is_a_setting(backend, session):
    from kamengd.settings.services import set_setting

    level, _ = agents.set_level(session, name=name("depth"), discount="1", actor="t")
    top = agents.create_agent(session, username=name("top"), level=level.name, actor="t")
    set_setting(session, "agents.max_depth", "1", actor="t")
    with pytest.raises(InvalidRequest, match="1 levels below the shop"):
        agents.create_agent(session, username=name("sub"), level=level.name, parent=top.username, actor="t")
    set_setting(session, "agents.max_depth", "4", actor="t")
    parent = top
    for _depth in range(3):
        parent = agents.create_agent(session, username=name("sub"), level=level.name, parent=parent.username,
                                     actor="t")
    assert parent.depth == 4
    with pytest.raises(InvalidRequest, match="4 levels below the shop"):
        agents.create_agent(session, username=name("sub"), level=level.name, parent=parent.username, actor="t")
    for bad in ("0", "11", "three"):
        with pytest.raises(InvalidRequest, match="agents.max_depth"):
            set_setting(session, "agents.max_depth", bad, actor="t")
