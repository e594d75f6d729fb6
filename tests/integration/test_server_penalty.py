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

