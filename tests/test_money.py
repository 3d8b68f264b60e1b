from decimal import Decimal

import pytest

from kamengd.errors import InvalidRequest
from kamengd.money import format_cents, parse_money


@pytest.mark.parametrize("text, cents", [("9.9", 990), ("9.90", 990), ("0.01", 1), ("100", 10000),
                                         (" 12.345000 ".replace("345000", "340"), 1234),
                                         (Decimal("5.5"), 550)])
def test_parse(text, cents):
    assert parse_money(text) == cents


@pytest.mark.parametrize("text", ["1.234", "-1", "0", "abc", "NaN", "Infinity", "", "1e20", "1e1000000",
                                  "-1e1000000", "1e-1000000"])
def test_parse_rejects(text):
    with pytest.raises(InvalidRequest):
        parse_money(text)


def test_float_is_refused():
    with pytest.raises(TypeError):
        parse_money(9.9)


def test_zero_allowed_when_asked():
    assert parse_money("0", allow_zero=True) == 0


@pytest.mark.parametrize("cents, text", [(0, "0.00"), (5, "0.05"), (990, "9.90"), (123456, "1234.56"),
                                         (-250, "-2.50")])
def test_format(cents, text):
    assert format_cents(cents) == text


def test_gateway_minor_units():
    """What a gateway is sent and reads back: hundredths for most currencies, whole units for
    zero-decimal ones (only whole amounts), nothing for three-decimal ones (never a tenth of the
    price), and ISK in hundredths as Stripe counts it."""
    from kamengd.money import from_minor_units, to_minor_units

    assert to_minor_units(1230, "CNY") == 1230 and from_minor_units(1230, "cny") == 1230
    assert to_minor_units(50000, "JPY") == 500 and from_minor_units(500, "jpy") == 50000
    assert to_minor_units(50050, "JPY") is None
    assert to_minor_units(500000, "ISK") == 500000 and from_minor_units(500000, "isk") == 500000
    assert to_minor_units(1000, "KWD") is None and from_minor_units(1000, "kwd") is None
    assert from_minor_units(True, "CNY") is None and from_minor_units(0, "CNY") is None
    assert from_minor_units("1230", "CNY") is None
