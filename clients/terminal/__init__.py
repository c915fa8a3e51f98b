"""thinserve-terminal: the reference software terminal (see docs/software-terminal.md).

It shows one RFB screen, full-screen, and sends keyboard, pointer and
clipboard; thinserve decides what it shows.  Run it with
``thinserve-terminal`` or ``python -m clients.terminal``.
"""
