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
               N_("maximum quantity"), N_("sort order"), N_("reason"), N_("note"), N_("name"),
               N_("amount off"), N_("percent off"), N_("largest discount"), N_("minimum amount"), N_("uses"),
               N_("uses per buyer"), N_("valid from"), N_("valid until"), N_("daily limit per buyer"),
               N_("tiers"), N_("sale price"), N_("sale from"), N_("sale until"),
               N_("limit"), N_("minutes"), N_("days"), N_("minimum orders"), N_("parent"),
               N_("message"), N_("picture"), N_("image"))
TRANSLATED_PARAMS = ("field", "name", "what")


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

    @property
    def errors(self) -> list[KamengdError]:
        """Each error this one reports (FormErrors: several)."""
        return [self]

    def localized(self, gettext, shown=None) -> str:
        """The error in a reader's language: gettext(template, **params) (flask_babel's).
        A value that is itself an error (a check's reason under a field's name) is translated
        too; `shown(name, value)`, when given, says other values (a status) in words."""
        if not self.params:
            return gettext(self.template)

        def say(name, value):
            if isinstance(value, KamengdError):
                return value.localized(gettext, shown)
            if name in TRANSLATED_PARAMS and value in FIELD_NAMES:
                return gettext(value)
            return shown(name, value) if shown is not None else value
        return gettext(self.template, **{name: say(name, value) for name, value in self.params.items()})


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


class Unauthorized(KamengdError):
    """A signed request that does not prove who sent it (the agent API): nothing changed."""
    code = "unauthorized"
    http_status = 401


class Forbidden(KamengdError):
    """Who asked is known, but may not do this (an API key without the scope)."""
    code = "forbidden"
    http_status = 403


class InsufficientBalance(KamengdError):
    """A debit the balance does not cover: nothing was booked."""
    code = "insufficient_balance"
    http_status = 402


class RateLimited(KamengdError):
    """Too many attempts from one address (a risk rule's refusal of lookups)."""
    code = "rate_limited"
    http_status = 429
    retry_after = 60


class CaptchaRequired(KamengdError):
    """A risk rule asks this attempt to solve a captcha first (kamengd.risk.captcha): the
    answer carries a new `challenge`; the attempt is sent again with its solution."""
    code = "captcha_required"
    http_status = 400

    def __init__(self, message: str, /, *, challenge: dict, **params):
        super().__init__(message, **params)
        self.challenge = challenge


class Busy(KamengdError):
    """The database could not take the request now (a lock wait ran out, the
    server is away): nothing was changed, the client should try again."""
    code = "busy"
    http_status = 503
    retry_after = 2


class FormErrors(InvalidRequest):
    """Every mistake of a form with several fields, found at once. The CLI and the
    API read them on one line ("; "); the panel shows each (`errors`). Raised by
    Collector.check() only when there are two or more: one error is raised as itself."""

    def __init__(self, errors: list[KamengdError]):
        super().__init__("; ".join(e.message for e in errors))
        self._errors = list(errors)
        self.code, self.http_status = errors[0].code, errors[0].http_status

    @property
    def errors(self) -> list[KamengdError]:
        return list(self._errors)

    def localized(self, gettext, shown=None) -> str:
        return "; ".join(e.localized(gettext, shown) for e in self._errors)


class Collector:
    """Checks a form's fields one by one and keeps going after a mistake:

        found = Collector()
        with found:
            price = parse_money(...)
        with found:
            ...
        found.check()      # raises the error, or FormErrors for several
    """

    def __init__(self) -> None:
        self.errors: list[KamengdError] = []

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, (InvalidRequest, Conflict)):
            self.errors.extend(exc.errors)
            return True
        return False

    def add(self, error: KamengdError) -> None:
        self.errors.append(error)

    def check(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise FormErrors(self.errors)
