"""The admin dashboard: a web site on its own listener serving the admin API
over HTTP(S), logins and API tokens, a live wall of every screen, the
admins' viewers and Prometheus metrics (docs/dashboard.md).

``wiring`` puts it together for the running server; ``site`` is the
twisted.web tree; ``accounts`` and ``auth`` decide who is asking;
``thumbnails`` and ``events`` keep the pages live; ``viewer`` shows a
desktop to an admin, view-only or taken over.
"""
