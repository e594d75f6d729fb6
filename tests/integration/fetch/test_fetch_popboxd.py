"""popbox fetch against popboxd (the project's own server), where popboxd has
the feature: skipped with the reason when popboxd is not built or does not
start, so the client's suite never depends on the server's progress."""

import os
import sys

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from fetch_env import (RUNAWAY_SEC, CertAuthority, digest_counts, make_message,  # noqa: E402
                       read_maildir)

try:
    import popbox_server  # noqa: E402
except ImportError:  # pragma: no cover
    popbox_server = None


def start_popboxd(config=None):
    if popbox_server is None:
        pytest.skip("tests/integration/popbox_server.py is not available")
    if not os.access(popbox_server.popboxd_path(), os.X_OK):
        pytest.skip("popboxd is not built")
    srv = popbox_server.PopboxServer(users={"alice": "secret"}, config=config)
    try:
        srv.start()
    except Exception as e:  # the server is someone else's work in progress
        srv.cleanup()
        pytest.skip("popboxd does not start with this configuration: %s" % str(e)[:300])
    return srv


@pytest.fixture
def popboxd():
    srv = start_popboxd()
    yield srv
    srv.cleanup()


def args(srv, tmp_path, *extra):
    return ["--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
            "--allow-plaintext", "--auth", "user", "--user", "alice",
            "--password-command", "echo secret",
            "--deliver", "maildir:%s" % (tmp_path / "Mail")] + list(extra)


def test_delete_mode_against_popboxd(client, popboxd, tmp_path):
    msgs = [make_message(i, body_size=100 + 50 * i) for i in range(30)]
    for m in msgs:
        popboxd.deliver(m)
    client.fetch(*args(popboxd, tmp_path), check=0)
    got = read_maildir(str(tmp_path / "Mail"))
    assert digest_counts(got.values()) == digest_counts(msgs)
    assert popboxd.message_files() == {}


def test_keep_mode_against_popboxd(client, popboxd, tmp_path):
    msgs = [make_message(i) for i in range(5)]
    for m in msgs:
        popboxd.deliver(m)
    client.fetch(*args(popboxd, tmp_path, "--keep"), check=0)
    p = client.fetch(*args(popboxd, tmp_path, "--keep"), check=0)
    assert "fetched 0" in p.out
    popboxd.deliver(make_message(77))
    p = client.fetch(*args(popboxd, tmp_path, "--keep"), check=0)
    assert "fetched 1" in p.out
    assert len(popboxd.message_files()) == 6


def test_implicit_tls_against_popboxd(client, tmp_path):
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    ca = CertAuthority(str(ca_dir))
    os.chmod(ca.key, 0o600)
    os.chmod(str(ca_dir), 0o755)
    os.chmod(str(tmp_path), 0o755)
    from fetch_env import free_port
    tls_port = free_port()
    srv = start_popboxd(config={"tls_cert": ca.cert, "tls_key": ca.key,
                                "listen_tls": "127.0.0.1:%d" % tls_port})
    try:
        msgs = [make_message(i) for i in range(4)]
        for m in msgs:
            srv.deliver(m)
        # does this popboxd speak TLS on that port at all? (an independent client)
        import poplib
        import ssl
        try:
            ctx = ssl.create_default_context(cafile=ca.ca)
            poplib.POP3_SSL("127.0.0.1", tls_port, context=ctx, timeout=RUNAWAY_SEC).quit()
        except (OSError, ssl.SSLError, poplib.error_proto) as e:
            pytest.skip("popboxd does not serve implicit TLS yet (%s)" % e)
        p = client.fetch("--host", "127.0.0.1", "--port", str(tls_port), "--tls", "implicit",
                         "--tls-trust-file", ca.ca, "--auth", "user", "--user", "alice",
                         "--password-command", "echo secret",
                         "--deliver", "maildir:%s" % (tmp_path / "Mail"))
        assert p.returncode == 0, p.err
        assert digest_counts(read_maildir(str(tmp_path / "Mail")).values()) == digest_counts(msgs)
        # STLS on the plain port, where popboxd offers it
        pl = poplib.POP3("127.0.0.1", srv.port, timeout=RUNAWAY_SEC)
        has_stls = "STLS" in pl.capa()
        pl.quit()
        if not has_stls:
            pytest.skip("popboxd does not offer STLS yet")
        for m in msgs:
            srv.deliver(m)
        p = client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "starttls",
                         "--tls-trust-file", ca.ca, "--auth", "user", "--user", "alice",
                         "--password-command", "echo secret",
                         "--deliver", "maildir:%s" % (tmp_path / "Mail2"), "-v")
        assert p.returncode == 0, p.err
        assert srv.message_files() == {}
    finally:
        srv.cleanup()


def test_auth_auto_against_popboxd(client, popboxd, tmp_path):
    popboxd.deliver(make_message(1))
    a = args(popboxd, tmp_path)
    i = a.index("--auth")
    del a[i:i + 2]
    client.fetch(*a, check=0)
    assert popboxd.message_files() == {}
