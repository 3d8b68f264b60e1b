"""kamengd: a self-hosted card-key shop appliance."""
__version__ = "0.1.0"


def create_app(config=None):
    from .app import create_app as _create_app

    return _create_app(config)
