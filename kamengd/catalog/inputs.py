"""What a buyer fills in for a product (代充: the QQ number, the game account, the phone).

A product declares up to MAX_FIELDS fields, each a label, a kind and whether it
is required. The kinds are fixed patterns, never a regular expression typed by
staff (one could take seconds to match a crafted value). The buyer's values
are kept on the order with their labels, as the order was placed, for the
staff who deliver it. They are not secrets: the panel and exports show them.
"""
from __future__ import annotations

import json
import re

from ..errors import InvalidRequest
from ..validation import has_control_characters, is_email_address

MAX_FIELDS = 5
MAX_LABEL = 40
MAX_VALUE = 200

# kind -> (the pattern a value must match, the HTML inputmode, a description)
KINDS = {
    "text": (None, "text", "any text"),
    "qq": (re.compile(r"[1-9][0-9]{4,11}"), "numeric", "a QQ number (5 to 12 digits)"),
    "phone": (re.compile(r"\+?[0-9]{6,15}"), "tel", "a phone number (digits, an optional + first)"),
    # (\- escaped: the browser reads `pattern` with the v flag, where a bare - in a class is an error)
    "account": (re.compile(r"[A-Za-z0-9_.@\-]{2,64}"), "text", "an account name (letters, digits, _ . @ -)"),
    "email": (None, "email", "an e-mail address"),
}


def parse_fields(text: str) -> list[dict]:
    """The fields from the panel's text: one a line, `label | kind | required` (kind and
    required optional: text, optional). Raises InvalidRequest naming the line."""
    if not isinstance(text, str):
        raise InvalidRequest("input fields: text expected")
    fields = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        label = parts[0]
        kind = (parts[1] if len(parts) > 1 and parts[1] else "text").lower()
        flag = (parts[2] if len(parts) > 2 and parts[2] else "optional").lower()
        if not label or len(label) > MAX_LABEL or has_control_characters(label):
            raise InvalidRequest("input fields, line %(number)s: a label of 1 to %(MAX_LABEL)s "
                                 "characters first", number=number, MAX_LABEL=MAX_LABEL)
        if kind not in KINDS:
            raise InvalidRequest("input fields, line %(number)s: kind %(kind)r is not one of %(kinds)s",
                                 number=number, kind=kind[:20], kinds=", ".join(KINDS))
        if flag not in ("required", "optional", "必填", "选填"):
            raise InvalidRequest("input fields, line %(number)s: say required or optional, not %(flag)r",
                                 number=number, flag=flag[:20])
        fields.append({"key": f"f{len(fields) + 1}", "label": label, "kind": kind,
                       "required": flag in ("required", "必填")})
        if len(fields) > MAX_FIELDS:
            raise InvalidRequest("input fields: at most %(MAX_FIELDS)s", MAX_FIELDS=MAX_FIELDS)
    if len({f["label"] for f in fields}) != len(fields):
        raise InvalidRequest("input fields: two fields have the same label")
    return fields


def fields_text(fields: list[dict]) -> str:
    """The panel's text for stored fields (parse_fields reads it back)."""
    return "\n".join(f"{f['label']} | {f['kind']} | {'required' if f['required'] else 'optional'}" for f in fields)


def load(stored: str | None) -> list[dict]:
    return json.loads(stored) if stored else []


def dump(fields: list[dict]) -> str | None:
    return json.dumps(fields, ensure_ascii=False, sort_keys=True) if fields else None


def html_pattern(kind: str) -> str | None:
    pattern = KINDS[kind][0]
    return pattern.pattern if pattern is not None else None


def check_values(fields: list[dict], given) -> list[dict]:
    """The buyer's values as [{"label", "value"}] (blank optional ones left out), or
    InvalidRequest naming the field: `input: <label>: ...`."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InvalidRequest("input: an object of the product's fields is required")
    known = {f["key"] for f in fields}
    unknown = [k for k in given if k not in known]
    if unknown:
        raise InvalidRequest("input: %(unknown)r is not a field of this product", unknown=str(unknown[0])[:20])
    values = []
    for field in fields:
        value = given.get(field["key"], "")
        if not isinstance(value, str):
            raise InvalidRequest("input: %(field)s: text is required", field=field['label'])
        value = value.strip()
        if not value:
            if field["required"]:
                raise InvalidRequest("input: %(field)s: required", field=field['label'])
            continue
        pattern, _mode, description = KINDS[field["kind"]]
        bad = (len(value) > MAX_VALUE or has_control_characters(value)
               or (pattern is not None and not pattern.fullmatch(value))
               or (field["kind"] == "email" and not is_email_address(value)))
        if bad:
            raise InvalidRequest("input: %(field)s: %(description)s is required",
                                 field=field['label'], description=description)
        values.append({"label": field["label"], "value": value})
    return values
