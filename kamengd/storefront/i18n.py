"""Chinese by default, English on request (?lang=en, remembered in a cookie).

A page passes both texts, t("中文", "English"): the two stay side by side in
the template, which is all a storefront of a few pages needs. The panel (K5)
brings Flask-Babel.
"""
from flask import g, request

LANGS = ("zh", "en")
COOKIE = "lang"


def current_lang() -> str:
    lang = getattr(g, "lang", None)
    if lang is None:
        lang = request.args.get("lang") or request.cookies.get(COOKIE) or "zh"
        g.lang = lang if lang in LANGS else "zh"
    return g.lang


def t(zh: str, en: str) -> str:
    return en if current_lang() == "en" else zh


def remember_lang(response):
    wanted = request.args.get("lang")
    if wanted in LANGS:
        response.set_cookie(COOKIE, wanted, max_age=365 * 24 * 3600, samesite="Lax", httponly=True)
    return response
