"""Per-maildrop limits (issue 5 item 5): a maildrop over max_maildrop_messages
or max_maildrop_size is refused at login with -ERR [SYS/PERM], nothing in it
is touched, and the session may go on (QUIT works)."""
from popbox_server import RUNAWAY_SEC, POP3Raw, fresh_source


def deliver(srv, n, size=100):
    for i in range(n):
        srv.deliver(b"Subject: m%d\n\n" % i + b"x" * size + b"\n")


def try_login(srv):
    c = POP3Raw(srv.port, source=fresh_source())
    assert c.cmd("USER alice") == b"+OK"
    r = c.cmd("PASS secret")
    return c, r


def test_too_many_messages(server_factory):
    srv = server_factory(config={"max_maildrop_messages": "3"}, start=False)
    deliver(srv, 4)
    srv.start()
    before = srv.message_files()
    c, r = try_login(srv)
    assert r.startswith(b"-ERR [SYS/PERM]"), r
    assert b"too large" in r
    assert c.cmd("QUIT").startswith(b"+OK")
    assert srv.message_files() == before
    # at the limit it works
    srv2 = server_factory(config={"max_maildrop_messages": "4"}, start=False)
    deliver(srv2, 4)
    srv2.start()
    c, r = try_login(srv2)
    assert r.startswith(b"+OK Logged in, 4 messages"), r
    c.cmd("QUIT")


def test_too_many_octets(server_factory):
    srv = server_factory(config={"max_maildrop_size": "1K"}, start=False)
    deliver(srv, 3, size=500)
    srv.start()
    c, r = try_login(srv)
    assert r.startswith(b"-ERR [SYS/PERM]"), r
    c.cmd("QUIT")
    assert "max_maildrop_size" in srv.log()


def test_bad_size_value_is_a_config_error(server_factory):
    import subprocess
    srv = server_factory(config={"max_maildrop_size": "12X", "listen": "127.0.0.1:1110"}, start=False)
    srv.write_config()
    p = subprocess.run(srv.command("-t"), capture_output=True, text=True, timeout=RUNAWAY_SEC)
    assert p.returncode == 1 and "max_maildrop_size" in p.stdout + p.stderr, p.stderr
