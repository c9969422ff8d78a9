"""The web console: a single-page app served by `openbdr server`, plus the read endpoints
and the event stream it needs beyond the REST API (`install(app)` adds both)."""

from .routes import install

__all__ = ["install"]
