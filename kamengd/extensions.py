"""The Flask-SQLAlchemy object and the declarative base every model uses."""
from flask import current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Named constraints, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)

# Limits per client address; storage and on/off come from [ratelimit].
limiter = Limiter(key_func=get_remote_address)


@limiter.request_filter
def _limits_off_for_this_app() -> bool:
    # The Limiter object is shared by every app in the process and keeps the
    # on/off switch of the last one initialised; each app's own setting wins.

    return not current_app.config.get("RATELIMIT_ENABLED", True)

# Every form posts a CSRF token; the JSON API and gateway callbacks are exempt
# (no cookies authenticate them).
csrf = CSRFProtect()
