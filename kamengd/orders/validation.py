"""What a buyer's order must look like before anything is read or written."""
from __future__ import annotations

from ..errors import InvalidRequest
from ..validation import MAX_EMAIL, is_email_address

MAX_QUERY_PASSWORD = 128


def check_order_input(product_id, quantity, email, channel_code, query_password, coupon) -> str:
    """Raise InvalidRequest for a malformed order; returns the e-mail address, stripped."""
    if not isinstance(product_id, int) or isinstance(product_id, bool) or not 0 < product_id < 2**31:
        raise InvalidRequest("product_id: a positive integer is required")
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        raise InvalidRequest("quantity: an integer is required")
    if not isinstance(email, str) or len(email) > MAX_EMAIL or not is_email_address(email.strip()):
        raise InvalidRequest("email: a valid e-mail address is required")
    if not isinstance(channel_code, str) or not channel_code or len(channel_code) > 32:
        raise InvalidRequest("channel: a payment channel code is required")
    if query_password is not None and (not isinstance(query_password, str)
                                       or not 4 <= len(query_password) <= MAX_QUERY_PASSWORD):
        raise InvalidRequest("query_password: 4 to %(longest)s characters", longest=MAX_QUERY_PASSWORD)
    if coupon is not None and not isinstance(coupon, str):
        raise InvalidRequest("coupon: a coupon code, or leave it out")
    return email.strip()
