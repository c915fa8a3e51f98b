"""Several thinserve processes ("nodes") sharing one PostgreSQL database.

``nodes`` keeps the table of nodes (who is alive, judged by the database's
clock), ``leases`` hands out named leases of which exactly one node holds
each, ``feed`` listens for the change notifications the store sends, and
``service`` runs all three for a server.  ``command`` is ``thinserve
nodes``.  See docs/scale-out.md.

Importing this package loads nothing heavy: psycopg is imported by the
modules that talk to the database.
"""
