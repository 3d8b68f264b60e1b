"""kamengd: a self-hosted card-key shop appliance."""
from .version import __version__  # noqa: F401

__all__ = ["__version__"]
