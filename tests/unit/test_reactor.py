"""The server's reactor (``thinserve.reactor``), run for real in a process of its own.

pytest-twisted installs Twisted's own asyncio reactor in this process, so
the server's is started in a child: it echoes over loopback TCP, hands a
socket's reads to the connection without the legacy log context, and a
connection whose handler fails is closed and the failure logged, as under
Twisted's reactor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, socket, sys
    from thinserve.cli import install_reactor
    install_reactor()
    from twisted.internet import protocol, reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    seen = {"lost": 0, "handlers": []}

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            loop = reactor._asyncioEventloop
            key = loop._selector.get_key(self.transport.fileno())
            seen["handlers"].append(key.data[0]._callback.__name__)
            if data == b"fail":
                raise ValueError("a handler that fails")
            self.transport.write(data)

        def connectionLost(self, reason):
            seen["lost"] += 1
            if seen["lost"] == 2:
                reactor.stop()

    factory = protocol.Factory.forProtocol(Echo)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1").getHost().port

    def talk():
        one = socket.create_connection(("127.0.0.1", port))
        one.setblocking(False)
        one.send(b"hello")
        def read_echo():
            try:
                seen["echo"] = one.recv(64).decode()
            except BlockingIOError:
                reactor.callLater(0.01, read_echo)
                return
            one.close()
            two = socket.create_connection(("127.0.0.1", port))
            two.send(b"fail")
            seen["two"] = two
        reactor.callLater(0.01, read_echo)

    reactor.callWhenRunning(talk)
    reactor.callLater(30, reactor.stop)
    reactor.run()
    seen.pop("two", None)
    print(json.dumps(seen))
    """
)


def test_the_servers_reactor_echoes_reads_directly_and_closes_a_failing_connection() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["echo"] == "hello"
    assert seen["lost"] == 2  # the echo's connection, and the one whose handler failed
    assert set(seen["handlers"]) == {"_readOrWrite"}  # no callWithLogger around it
    assert "a handler that fails" in done.stderr
