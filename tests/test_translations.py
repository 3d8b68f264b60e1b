"""The panel speaks Chinese by default: every string has a translation, and the
compiled catalog that ships is the one the .po file says (scripts/translations)."""
from __future__ import annotations

from pathlib import Path

import kamengd

PACKAGE = Path(kamengd.__file__).parent
PO = PACKAGE / "translations" / "zh" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")
SOURCES = Path(__file__).resolve().parent.parent / "kamengd"


def _source_strings() -> set[str]:
    from babel.messages.extract import extract_from_dir

    method_map = [("panel/**.py", "python"), ("panel/templates/**.html", "jinja2")]
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2)}
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(SOURCES), method_map=method_map, keywords=keywords):
        found.add(message if isinstance(message, str) else message[0])
    return found


def _catalog():
    from babel.messages.pofile import read_po

    with PO.open("rb") as fh:
        return read_po(fh)


def test_every_panel_string_is_translated():
    strings = _source_strings()
    assert len(strings) > 100
    catalog = _catalog()
    missing = sorted(s for s in strings if not (catalog.get(s) and catalog.get(s).string))
    assert not missing, f"untranslated (run scripts/translations, then translate): {missing[:20]}"


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def test_the_compiled_catalog_matches_the_po_file():
    from babel.messages.mofile import read_mo

    with MO.open("rb") as fh:
        # (a plural's id and forms: a list in the .mo, a tuple in the .po)
        compiled = {_plain(m.id): _plain(m.string) for m in read_mo(fh) if m.id}
    written = {_plain(m.id): _plain(m.string) for m in _catalog() if m.id and m.string and not m.fuzzy}
    assert compiled == written, "run scripts/translations compile"


def test_pages_are_chinese_by_default_and_english_on_request(client):
    zh = client.get("/admin/login").get_data(as_text=True)
    assert 'lang="zh-CN"' in zh and "登录" in zh
    en = client.get("/admin/login?lang=en").get_data(as_text=True)
    assert 'lang="en"' in en and "Sign in" in en
    assert "Sign in" in client.get("/admin/login").get_data(as_text=True)   # remembered
