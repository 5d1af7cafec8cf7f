"""The status page wired to the running daemon (SPEC §11), served by the metrics listener.

The page (:mod:`bgsyncd.web`) reads the daemon through a
:class:`~bgsyncd.web.view.Live` the daemon fills in; here the listener's
address and the token decide who may see it (:class:`~bgsyncd.web.security.Guard`).
"""

from __future__ import annotations

from bgsyncd.config.rules import parse_listen
from bgsyncd.config.schema import Settings
from bgsyncd.web.app import PageApp
from bgsyncd.web.security import Guard
from bgsyncd.web.thumbcache import ThumbCache
from bgsyncd.web.view import Live


def open_page(settings: Settings, live: Live) -> PageApp | None:
    """The page for ``settings``' listener; None when there is no listener or ``page = false``."""
    address = parse_listen(settings.metrics.listen)
    if address is None or not settings.metrics.page:
        return None
    token = settings.page_token.get_secret_value() if settings.page_token is not None else None
    guard = Guard(address[0], address[1], token)
    return PageApp(live, guard, ThumbCache(settings.state_dir / "thumbs"))
