"""Domain errors: service functions raise these.

The CLI prints their message on one line and exits non-zero; the web app
turns them into answers (kamengd.http_errors). A leaf that imports nothing:
a key-sealing process loads it without Flask or SQLAlchemy.
"""
from __future__ import annotations


def N_(text: str) -> str:
    """Marks text for the translation catalogue (scripts/translations); translated where shown."""
    return text


# The names services put before an error ("price: ..."): the panel shows them translated.
FIELD_NAMES = (N_("price"), N_("cost price"), N_("category"), N_("low-stock threshold"), N_("minimum quantity"),
               N_("maximum quantity"), N_("sort order"), N_("reason"), N_("note"), N_("name"))
TRANSLATED_PARAMS = ("field", "name")


class KamengdError(Exception):
    code = "invalid_request"
    http_status = 400

    def __init__(self, message: str, /, **params):
        """`message` is English; with `params` it is a template (`%(name)s`) they fill in,
        which the panel translates as a whole (Babel extracts these calls)."""
        text = message % params if params else message
        super().__init__(text)
        self.message = text          # the CLI's and the JSON API's words
        self.template, self.params = message, params

    def localized(self, gettext) -> str:
        """The error in a reader's language: gettext(template, **params) (flask_babel's)."""
        if not self.params:
            return gettext(self.template)
        params = {k: gettext(v) if k in TRANSLATED_PARAMS and v in FIELD_NAMES else v for k, v in self.params.items()}
        return gettext(self.template, **params)


class ConfigError(KamengdError):
    """The configuration is missing, unreadable or invalid."""


class InvalidRequest(KamengdError):
    pass


class NotFound(KamengdError):
    code = "not_found"
    http_status = 404


class Conflict(KamengdError):
    """The request is valid but the current state forbids it (e.g. already exists).
    Never a buyer's order: a shop without enough stock says OutOfStock."""
    code = "conflict"
    http_status = 409


class OutOfStock(KamengdError):
    code = "out_of_stock"
    http_status = 409


class Busy(KamengdError):
    """The database could not take the request now (a lock wait ran out, the
    server is away): nothing was changed, the client should try again."""
    code = "busy"
    http_status = 503
    retry_after = 2
