"""Everything the tests share, one idea per module (docs/testing.md lists them).

Real programs and how to drive them (xvnc, qemu, viewer, vncdo, ...),
thinserve and its terminals in the test's reactor (server, terminal,
console), raw network peers (rawpeer, websocket, webserve, browser), and the
one way to wait for something (waiting).  fixtures is the pytest plugin
tests/conftest.py loads.
"""
