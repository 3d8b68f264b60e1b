"""Product descriptions: Markdown written by staff, shown to buyers as safe HTML.

markdown-it-py (CommonMark) with raw HTML off, so anything that looks like a tag is shown as
text; its link check refuses javascript:, vbscript:, file: and data: addresses. Images are
off (the storefront's CSP loads none from elsewhere, and a description is no place for
tracking pixels); links open without passing the shop's address (rel="nofollow noreferrer").
A line break in the text is a line break on the page, as staff wrote it before Markdown.
"""
from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt
from markupsafe import Markup

_md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False}).disable(["image"])


def _link_open(renderer, tokens, idx, options, env):
    tokens[idx].attrSet("rel", "nofollow noreferrer")
    return renderer.renderToken(tokens, idx, options, env)


_md.add_render_rule("link_open", _link_open)


@lru_cache(maxsize=512)
def render(text: str) -> Markup:
    """The description as HTML (safe: see the module)."""
    return Markup(_md.render(text or ""))
