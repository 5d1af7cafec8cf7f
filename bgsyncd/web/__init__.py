"""The status page (SPEC §11): server-rendered HTML on the metrics listener, one static script.

- :mod:`~bgsyncd.web.app`: the WSGI app (``/``, ``/part``, ``/api/status``,
  ``/thumb/<job>/<before|after>``, ``POST /retry``, ``/login``, ``/static/...``);
  the service hands it to the metrics listener (``ops.server``), which serves
  it in its own bounded threads, off the main loop.
- :mod:`~bgsyncd.web.view`: what the page shows, read from the store and from
  the running daemon (:class:`~bgsyncd.web.view.Live`, filled in by the service).
- :mod:`~bgsyncd.web.security`: sessions, the CSRF token, the Origin/Host
  check and the token login.
- :mod:`~bgsyncd.web.thumbcache`: thumbnails kept in the state folder within a
  size bound (made by :mod:`bgsyncd.imaging.thumbs`).

Jinja2 lives here only, with autoescape on: a file name is always text.
"""
