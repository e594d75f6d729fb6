"""Free loopback ports for the servers the tests start.

The kernel hands out a port on bind(0); two such ports asked for one after
the other may be the same number once the first socket is closed. A test that
configures two listeners (plain and TLS, POP3 and POP3S) from two calls would
then start a server with one address twice. free_port() therefore never
returns a number it returned before in this test process.

Under pytest-xdist (make integration runs the suites in several worker
processes at once) two workers asking the kernel at the same moment could be
given the same number, each believing it free. There every worker takes its
ports from a range of its own, below the kernel's ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range, 32768 and up on Debian) so that no
client's outgoing connection takes them either. POPBOX_PORT_BASE moves the
ranges, so that two runs of the suites on one machine (the plain and the
sanitizer build) do not share them.
"""

import os
import random
import socket

_handed_out = set()
_RANGE = 1000          # ports per xdist worker
_next = None


def _worker_range():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return None
    base = int(os.environ.get("POPBOX_PORT_BASE", "20000"))
    lo = base + int(worker[2:]) * _RANGE
    return lo, lo + _RANGE


def _bindable(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago and was not handed out before."""
    global _next
    rng = _worker_range()
    if rng is not None:
        lo, hi = rng
        if _next is None:
            _next = lo + random.randrange(hi - lo)
        for _ in range(hi - lo):
            port = _next
            _next = lo + (_next + 1 - lo) % (hi - lo)
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
        raise RuntimeError("no fresh free port in %d-%d on %s" % (lo, hi - 1, host))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1000):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port on %s after 1000 tries" % host)
