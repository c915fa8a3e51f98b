"""A bandwidth-limited TCP proxy on loopback, in the test's own Twisted reactor.

A terminal connects to the proxy; the proxy connects on to the target from
a loopback address of the test's choice (thinserve tells plain viewers
apart by address) and forwards both ways, each direction through its own
token bucket: at most ``rate`` bits per second on average, in bursts of at
most ``BURST`` bytes.  Data waiting for tokens is held in the proxy; when
more than ``HIGH_WATER`` bytes wait, the proxy stops reading from the
sending side (so the sender's own TCP flow control takes over, as on a
real slow link) and reads again below ``LOW_WATER``.
``set_rate(None)`` lifts the limit.
"""

from __future__ import annotations

from twisted.internet import endpoints, protocol

from .reactor import DelayedCall, ListeningPort, Transport, running_reactor, transport_of

BURST = 8 * 1024  # bytes the bucket holds at most
HIGH_WATER = 64 * 1024  # bytes held before the sending side is paused
LOW_WATER = 16 * 1024  # ... and resumed


class TokenBucket:
    """At most ``rate`` bytes per second on average, in bursts of ``burst`` bytes."""

    def __init__(self, rate: float | None, burst: int, now: float) -> None:
        self.rate = rate  # bytes per second; None: unlimited
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, want: int, now: float) -> int:
        """Bytes that may go now, at most ``want``; they are used up."""
        if self.rate is None:
            return want
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        allowed = min(want, int(self.tokens))
        self.tokens -= allowed
        return allowed

    def wait(self, want: int) -> float:
        """Seconds until ``want`` bytes (at most a burst) may go."""
        if self.rate is None:
            return 0.0
        need = min(want, self.burst) - self.tokens
        return max(need / self.rate, 0.001)


class Pipe:
    """One direction: bytes from ``source`` written to ``sink`` as the bucket allows."""

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.held = bytearray()
        self.forwarded = 0  # bytes written to the sink so far
        self.source: protocol.Protocol | None = None
        self.sink: Transport | None = None
        self._timer: DelayedCall | None = None
        self._paused = False

    def feed(self, data: bytes) -> None:
        self.held += data
        if len(self.held) > HIGH_WATER and not self._paused:
            self._pause_source(True)
        self.pump()

    def pump(self) -> None:
        self._timer = None
        if self.sink is None or not self.held:
            return
        count = self.bucket.take(len(self.held), running_reactor().seconds())
        if count:
            self.sink.write(bytes(self.held[:count]))
            del self.held[:count]
            self.forwarded += count
        if self._paused and len(self.held) < LOW_WATER:
            self._pause_source(False)
        if self.held and self._timer is None:
            delay = self.bucket.wait(len(self.held))
            self._timer = running_reactor().callLater(delay, self.pump)

    def _pause_source(self, pause: bool) -> None:
        self._paused = pause
        if self.source is None or self.source.transport is None:
            return
        transport = transport_of(self.source)
        if pause:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _Side(protocol.Protocol):
    """One end of a proxied connection: what it receives goes into ``out``."""

    def __init__(self, link: Link, out: Pipe) -> None:
        self.link = link
        self.out = out

    def dataReceived(self, data: bytes) -> None:
        self.out.feed(data)

    def connectionLost(self, reason: object = None) -> None:
        self.link.close()


class _ClientSide(_Side):
    def connectionMade(self) -> None:
        self.link.connect_target()


class Link:
    """One terminal's connection through the proxy: client side, target side."""

    def __init__(self, throttle: Throttle) -> None:
        now = running_reactor().seconds()
        self.throttle = throttle
        self.up = Pipe(TokenBucket(throttle.byte_rate, BURST, now))  # client -> target
        self.down = Pipe(TokenBucket(throttle.byte_rate, BURST, now))  # target -> client
        self.client = _ClientSide(self, self.up)
        self.target = _Side(self, self.down)
        self.up.source, self.down.source = self.client, self.target
        self.closed = False

    def connect_target(self) -> None:
        """The client is in: connect to the target (the client's bytes wait meanwhile)."""
        self.down.sink = transport_of(self.client)
        endpoint = endpoints.TCP4ClientEndpoint(
            running_reactor(),
            "127.0.0.1",
            self.throttle.target_port,
            bindAddress=(self.throttle.source, 0),
        )
        connecting = endpoints.connectProtocol(endpoint, self.target)
        connecting.addCallbacks(self._target_connected, lambda failure: self.close())

    def _target_connected(self, target: protocol.Protocol) -> None:
        self.up.sink = transport_of(target)
        self.up.pump()

    def set_rate(self, byte_rate: float | None) -> None:
        for pipe in (self.up, self.down):
            pipe.bucket.rate = byte_rate
            pipe.pump()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in (self.up, self.down):
            pipe.stop()
        for side in (self.client, self.target):
            if side.transport is not None:
                transport_of(side).loseConnection()


class _Listener(protocol.Factory[_ClientSide]):
    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle

    def buildProtocol(self, addr: object) -> _ClientSide:
        link = Link(self.throttle)
        self.throttle.links.append(link)
        return link.client


class Throttle:
    """Listens on 127.0.0.1; forwards to 127.0.0.1:``target_port`` at ``bits_per_second``."""

    def __init__(
        self, target_port: int, bits_per_second: float | None, source: str = "127.0.0.1"
    ) -> None:
        self.target_port = target_port
        self.source = source  # the address the target sees connections come from
        self.byte_rate = _byte_rate(bits_per_second)
        self.links: list[Link] = []
        self._port: ListeningPort = running_reactor().listenTCP(
            0, _Listener(self), interface="127.0.0.1"
        )

    @property
    def port(self) -> int:
        return self._port.getHost().port

    @property
    def forwarded_down(self) -> int:
        """Bytes passed from the target to clients so far."""
        return sum(link.down.forwarded for link in self.links)

    def set_rate(self, bits_per_second: float | None) -> None:
        """Change the limit of every connection, now and later; None: no limit."""
        self.byte_rate = _byte_rate(bits_per_second)
        for link in self.links:
            link.set_rate(self.byte_rate)

    async def stop(self) -> None:
        for link in self.links:
            link.close()
        await self._port.stopListening()


def _byte_rate(bits_per_second: float | None) -> float | None:
    return None if bits_per_second is None else bits_per_second / 8
