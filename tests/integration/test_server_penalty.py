"""The failed-login penalty (src/server/auth_penalty.h) counts per source and
user, per user and per source; a login clears only the user who logged in.
Delays are checked as lower bounds only (a loaded machine can only make
them longer)."""

import time

from popbox_server import POP3Raw, fresh_source

HELD = 1.5   # the first penalty step is 2 s; anything held this long was held


def attempt(srv, source, user, password):
    """USER/PASS from source; returns (answer to PASS, seconds it took)."""
    c = POP3Raw(srv.port, source=source)
    try:
        assert c.cmd("USER " + user).startswith(b"+OK")
        t0 = time.monotonic()
        line = c.cmd("PASS " + password)
        return line, time.monotonic() - t0
    finally:
        c.close()


def test_own_logins_do_not_reset_guesses(server_factory):
    """An attacker who interleaves logins to his own account with guesses at
    another account from the same address is still slowed down."""
    srv = server_factory(users={"alice": "secret", "mallory": "mine"})
    src = fresh_source()
    line, _ = attempt(srv, src, "alice", "guess1")
    assert line.startswith(b"-ERR")
    line, _ = attempt(srv, src, "mallory", "mine")
    assert line.startswith(b"+OK"), line
    line, took = attempt(srv, src, "alice", "guess2")
    assert line.startswith(b"-ERR")
    assert took >= HELD, "the guess after the attacker's own login was not held (%.2f s)" % took



def proxied_attempt(srv, addr, user, password):
    """USER/PASS from IPv6 address addr, as a load balancer would pass it
    on (PROXY v1 TCP6); returns (answer to PASS, seconds it took)."""
    c = POP3Raw(srv.port, source=fresh_source(), read_greeting=False)
    try:
        c.send("PROXY TCP6 %s 2001:db8::ffff 40000 110\r\n" % addr)
        assert c.readline().startswith(b"+OK")
        assert c.cmd("USER " + user).startswith(b"+OK")
        t0 = time.monotonic()
        line = c.cmd("PASS " + password)
        return line, time.monotonic() - t0
    finally:
        c.close()


def test_ipv6_aggregation_prefix_is_configurable(server_factory):
    """auth_penalty_ipv6_prefix = 48: two addresses in different /64s of
    one /48 count as one source (with the default /64 they would not)."""
    from test_server_proxy import start_proxied
    srv = server_factory(config={"proxy_protocol": "yes", "proxy_trusted": "127.0.0.0/8",
                                 "plaintext_auth": "always", "auth_penalty_ipv6_prefix": "48"},
                         start=False)
    start_proxied(srv)
    line, _ = proxied_attempt(srv, "2001:db8:1:1::1", "alice", "guess1")
    assert line.startswith(b"-ERR"), line
    line, took = proxied_attempt(srv, "2001:db8:1:2::1", "alice", "guess2")
    assert line.startswith(b"-ERR"), line
    assert took >= HELD, "a guess from the same /48 was not held (%.2f s)" % took
