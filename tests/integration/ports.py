"""Free loopback ports for the servers the tests start.

The kernel hands out a port on bind(0); two such ports asked for one after
the other may be the same number once the first socket is closed. A test that
configures two listeners (plain and TLS, POP3 and POP3S) from two calls would
then start a server with one address twice. free_port() therefore never
returns a number it returned before in this test process.
"""

import socket

_handed_out = set()


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago and was not handed out before."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1000):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port on %s after 1000 tries" % host)
