"""The failed-login penalty (src/server/auth_penalty.h) counts per source and
user, per user and per source; a login clears only the user who logged in.
Delays are checked as lower bounds only (a loaded machine can only make
them longer)."""

import time

from popbox_server import POP3Raw, fresh_source

HELD = 1.5   # the first penalty step is 2 s; anything held this long was held


def timed_pass(c, user, password):
    """USER/PASS on connection c; returns (answer to PASS, seconds it took)."""
    try:
        assert c.cmd("USER " + user).startswith(b"+OK")
        t0 = time.monotonic()
        line = c.cmd("PASS " + password)
        return line, time.monotonic() - t0
    finally:
        c.close()


def attempt(srv, source, user, password):
    """USER/PASS from source."""
    return timed_pass(POP3Raw(srv.port, source=source), user, password)


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
    on (PROXY v1 TCP6)."""
    c = POP3Raw(srv.port, source=fresh_source(), read_greeting=False)
    c.send("PROXY TCP6 %s 2001:db8::ffff 40000 110\r\n" % addr)
    assert c.readline().startswith(b"+OK")
    return timed_pass(c, user, password)


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


TOO_MANY = b"-ERR [AUTH] Authentication failed; too many failed logins, closing connection"
FAILED = b"-ERR [AUTH] Authentication failed"


def fail_once(c, how, n):
    """One failed login on connection c by USER/PASS, AUTH PLAIN or APOP,
    each time for another user name (so the per-(source, user) penalty of
    the auth process does not hold the answers); returns the answer."""
    import base64
    user = "nobody%d" % n
    if how == "pass":
        assert c.cmd("USER " + user).startswith(b"+OK")
        return c.cmd("PASS wrong")
    if how == "plain":
        return c.cmd("AUTH PLAIN " + base64.b64encode(b"\0" + user.encode() + b"\0wrong").decode())
    return c.cmd("APOP %s %s" % (user, "0" * 32))


def test_third_failed_login_closes_the_connection(server_factory):
    """One connection cannot go on guessing: USER/PASS, AUTH and APOP
    failures count together, and the third (max_auth_failures, default 3)
    is answered with a last -ERR and the connection is closed."""
    srv = server_factory(config={"apop": "yes"})
    c = POP3Raw(srv.port, source=fresh_source())
    try:
        assert fail_once(c, "pass", 1) == FAILED
        # cancelling an exchange is not a failed login
        assert c.cmd("AUTH PLAIN").startswith(b"+")
        assert c.cmd("*").startswith(b"-ERR")
        assert fail_once(c, "plain", 2) == FAILED
        assert fail_once(c, "apop", 3) == TOO_MANY
        assert c.wait_closed() == b"", "the connection must close after the last answer"
    finally:
        c.close()
    assert "end=auth-failures" in srv.log()


def test_max_auth_failures_is_configurable(server_factory):
    srv = server_factory(config={"max_auth_failures": "5"})
    c = POP3Raw(srv.port, source=fresh_source())
    try:
        for n in range(4):
            assert fail_once(c, "pass" if n % 2 else "plain", n) == FAILED
        c.login()           # the right password still works after 4 failures
        c.quit()
    finally:
        c.close()
    srv.stop()
    srv.config["max_auth_failures"] = "1"
    srv.start()
    c = POP3Raw(srv.port, source=fresh_source())
    try:
        assert fail_once(c, "pass", 9) == TOO_MANY
        assert c.wait_closed() == b""
    finally:
        c.close()
