"""Withdrawals, as services on both databases: payout accounts checked per kind, the amount
held at once, finance paying or rejecting once, the minimum, the fee and the daily limit,
and bad input of every kind refused with nothing held."""
import datetime as dt
import secrets

import pytest
import sqlalchemy as sa

from kamengd.agents import services as agents
from kamengd.agents import withdrawals
from kamengd.errors import Conflict, FormErrors, InsufficientBalance, InvalidRequest, NotFound
from kamengd.ledger import services as ledger
from kamengd.settings.services import set_setting

TRC20 = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"   # a real TRON address (base58check)


def name(prefix):
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def payee(session):
    level, _ = agents.set_level(session, name=name("w"), discount="0", actor="t")
    agent = agents.create_agent(session, username=name("payee"), level=level.name, actor="t")
    agents.credit_balance(session, agent, 10000, reason="earned", actor="t")
    return agent


@pytest.fixture
def alipay(session, payee):
    return withdrawals.add_payout_account(session, payee, kind="alipay", account="13800138000", holder="张三",
                                          actor="t")


@pytest.mark.parametrize("kind, account, holder, bank", [
    ("alipay", "13800138000", "张三", ""),
    ("alipay", "zhang.san@example.com", "张三", ""),
    ("bank", "6222 0212 3456 7890 128", "张三", "工商银行"),
    ("usdt_trc20", TRC20, "me", ""),
    ("usdt_erc20", "0x" + "ab" * 20, "me", ""),
])
def test_payout_accounts_of_each_kind(backend, session, payee, kind, account, holder, bank):
    row = withdrawals.add_payout_account(session, payee, kind=kind, account=account, holder=holder, bank=bank,
                                         actor="t")
    assert (row.kind, row.account) == (kind, account.replace(" ", "") if kind == "bank" else account)


@pytest.mark.parametrize("kind, account, holder, bank, said", [
    ("paypal", "x@example.com", "me", "", "kind"),
    ("alipay", "12345", "张三", "", "Alipay"),
    ("alipay", "", "张三", "", "account is required"),
    ("alipay", "13800138000", "", "", "holder is required"),
    ("alipay", "13800138000", "张\n三", "", "holder"),
    ("bank", "6222021234567890128", "张三", "", "bank is required"),
    ("bank", "6222-0212", "张三", "工商银行", "12 to 19 digits"),
    ("usdt_trc20", TRC20[:-1] + "u", "me", "", "checksum"),       # one character off
    ("usdt_trc20", "0x" + "ab" * 20, "me", "", "TRC-20"),
    ("usdt_erc20", "0x" + "ab" * 19, "me", "", "ERC-20"),
    ("alipay", 13800138000, "张三", "", "text"),
])
def test_payout_accounts_that_are_refused(backend, session, payee, kind, account, holder, bank, said):
    with pytest.raises((InvalidRequest, FormErrors), match=said):
        withdrawals.add_payout_account(session, payee, kind=kind, account=account, holder=holder, bank=bank,
                                       actor="t")
    assert withdrawals.payout_accounts(session, payee.id) == []


def test_every_mistake_of_an_account_at_once(backend, session, payee):
    with pytest.raises(FormErrors) as caught:
        withdrawals.add_payout_account(session, payee, kind="bank", account="12", holder="", bank="", actor="t")
    assert len(caught.value.errors) == 3


def test_a_request_holds_then_finance_pays_it_once(backend, session, payee, alipay):
    row = withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="30.50", actor="a")
    assert (row.status, row.amount_cents, row.fee_cents) == ("requested", 3050, 0)
    from kamengd.notifications.models import Event
    told = session.scalars(sa.select(Event.payload).where(Event.type == "withdrawal.requested")).all()
    assert any(f'"withdrawal_id": {row.id}' in payload and '"amount": "30.50"' in payload and "13800138000" not in
               payload for payload in told)   # staff hear of it; the account number stays masked
    assert ledger.balances(session, payee.id) == {"available": 6950, "pending": 0, "held": 3050, "debt": 0}
    paid = withdrawals.pay_withdrawal(session, row.id, reference="ALI-0001", actor="finance")
    assert (paid.status, paid.reference, paid.reviewed_by) == ("paid", "ALI-0001", "finance")
    assert ledger.balances(session, payee.id) == {"available": 6950, "pending": 0, "held": 0, "debt": 0}
    for again in (lambda: withdrawals.pay_withdrawal(session, row.id, reference="ALI-0002", actor="f2"),
                  lambda: withdrawals.reject_withdrawal(session, row.id, reason="late", actor="f2")):
        with pytest.raises(Conflict, match="paid already"):
            again()
    assert ledger.balances(session, payee.id)["held"] == 0
    assert ledger.verify(session)[1] == []


def test_a_rejected_request_gives_the_amount_back(backend, session, payee, alipay):
    row = withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="100", actor="a")
    assert ledger.balances(session, payee.id)["available"] == 0
    with pytest.raises(InvalidRequest, match="reason"):
        withdrawals.reject_withdrawal(session, row.id, reason=" ", actor="finance")
    withdrawals.reject_withdrawal(session, row.id, reason="the name does not match", actor="finance")
    assert ledger.balances(session, payee.id) == {"available": 10000, "pending": 0, "held": 0, "debt": 0}
    with pytest.raises(NotFound):
        withdrawals.pay_withdrawal(session, 2**31 - 1, reference="x", actor="finance")
    assert ledger.verify(session)[1] == []


@pytest.mark.parametrize("amount", ["1e3", "-0", "0.001", "0", "-5", "+5", " ", "", "٩", "１０", "12.345",
                                    "99999999999999", "NaN", "Infinity", 10, 10.5, None, True, "10 000"])
def test_amounts_that_are_refused(backend, session, payee, alipay, amount):
    with pytest.raises(InvalidRequest, match="amount"):
        withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount=amount, actor="a")
    assert ledger.balances(session, payee.id) == {"available": 10000, "pending": 0, "held": 0, "debt": 0}
    assert withdrawals.list_withdrawals(session, agent_id=payee.id) == []


def test_more_than_the_balance_holds_nothing(backend, session, payee, alipay):
    with pytest.raises(InsufficientBalance):
        withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="100.01", actor="a")
    assert withdrawals.list_withdrawals(session, agent_id=payee.id) == []
    assert ledger.balances(session, payee.id)["held"] == 0


def test_another_agents_account_is_not_found(backend, session, payee, alipay):
    other = agents.create_agent(session, username=name("other"), level=_level_of(session, payee), actor="t")
    agents.credit_balance(session, other, 5000, reason="earned", actor="t")
    for account_id in (alipay.id, 0, -1, "1", 2**40, None):
        with pytest.raises(NotFound):
            withdrawals.request_withdrawal(session, other, payout_account_id=account_id, amount="10", actor="o")
    with pytest.raises(NotFound):
        withdrawals.remove_payout_account(session, other, alipay.id, actor="o")
    assert ledger.balances(session, other.id)["held"] == 0


def _level_of(session, agent):
    from kamengd.agents.models import AgentLevel
    return session.get(AgentLevel, agent.level_id).name


def test_minimum_fee_and_daily_limit(backend, session, payee, alipay):
    set_setting(session, "withdrawals.minimum", "20", actor="t")
    set_setting(session, "withdrawals.fee_percent", "1.5", actor="t")
    set_setting(session, "withdrawals.fee_fixed", "0.50", actor="t")
    set_setting(session, "withdrawals.daily_limit", "50", actor="t")
    with pytest.raises(InvalidRequest, match="smallest withdrawal is 20.00"):
        withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="19.99", actor="a")
    row = withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="33.33", actor="a")
    assert row.fee_cents == 50 + 50                # 1.5 % of 33.33 = 0.49995 -> 0.50, plus 0.50
    with pytest.raises(InvalidRequest, match="16.67 is left today"):
        withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="20", actor="a")
    # Tomorrow (in the shop's time zone) the limit starts again.
    tomorrow = dt.datetime.utcnow() + dt.timedelta(days=1)
    withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="20", actor="a", now=tomorrow)
    # A rejected request does not count against the day.
    withdrawals.reject_withdrawal(session, row.id, reason="retry", actor="finance")
    last = withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="50", actor="a")
    withdrawals.pay_withdrawal(session, last.id, reference="ALI-9", actor="finance")
    assert ledger.verify(session)[1] == []
    assert session.scalar(sa.select(sa.func.count()).select_from(withdrawals.Withdrawal)
                          .where(withdrawals.Withdrawal.agent_id == payee.id)) == 3


def test_a_fee_that_leaves_nothing_is_refused(backend, session, payee, alipay):
    set_setting(session, "withdrawals.minimum", "0", actor="t")
    set_setting(session, "withdrawals.fee_fixed", "5", actor="t")
    with pytest.raises(InvalidRequest, match="leaves nothing"):
        withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="5", actor="a")


@pytest.mark.parametrize("key, value", [("withdrawals.minimum", "1e3"), ("withdrawals.fee_percent", "101"),
                                        ("withdrawals.fee_fixed", "-1"), ("withdrawals.daily_limit", "0.001"),
                                        ("agents.commission_hold_days", "-1")])
def test_settings_that_are_refused(backend, session, key, value):
    with pytest.raises(InvalidRequest, match=key.replace(".", r"\.")):
        set_setting(session, key, value, actor="t")


def test_a_retried_request_with_its_key_holds_once(backend, session, payee, alipay):
    first = withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="30", actor="a",
                                           idempotency_key="pay-me-0001")
    again = withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="30", actor="a",
                                           idempotency_key="pay-me-0001")
    assert again.id == first.id and getattr(again, "replayed", False)
    assert ledger.balances(session, payee.id)["held"] == 3000
    with pytest.raises(Conflict, match="another withdrawal"):
        withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="31", actor="a",
                                       idempotency_key="pay-me-0001")
    for bad in ("", "a b", "x" * 65, "中文", 5):
        with pytest.raises(InvalidRequest, match="Idempotency-Key"):
            withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="1", actor="a",
                                           idempotency_key=bad)
    withdrawals.request_withdrawal(session, payee, payout_account_id=alipay.id, amount="30", actor="a",
                                   idempotency_key="pay-me-0002")   # another key: another withdrawal
    assert ledger.balances(session, payee.id)["held"] == 6000
    assert ledger.verify(session)[1] == []
