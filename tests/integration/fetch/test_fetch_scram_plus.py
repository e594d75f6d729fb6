"""popbox fetch with SCRAM-SHA-256-PLUS / SCRAM-SHA-1-PLUS (RFC 5802 §6,
issue 16 item 2) against popboxd with sasl_channel_binding = yes: the
tls-exporter binding on TLS 1.3 (RFC 9266), tls-unique on TLS 1.2 (RFC
5929; the client's OpenSSL is capped at TLS 1.2 through OPENSSL_CONF),
chosen by auth = auto; the "n" flag of plain SCRAM; and a man in the
middle whose certificate the client trusts (a TLS-terminating relay): its
binding is not the server's, the -PLUS login fails, and auto does not fall
back to SCRAM without binding (nor send 'y', which GNU SASL 2.2's client
cannot: see scram_set_binding in src/client/pop3c.c)."""

import os
import select
import socket
import ssl
import sys
import threading

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from fetch_env import digest_counts, make_message, read_maildir  # noqa: E402
from popbox_server import fresh_source  # noqa: E402
from test_server_tls_lib import PKI, scram_secret, tls_server  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def cb_server(server_factory, pki, channel_binding=True, bob=True):
    """popboxd over TLS (srv.tls_port implicit, srv.port with STLS); alice
    has {PLAIN}secret, bob a SCRAM-SHA-256 secret for "bob pw"."""
    cfg = {"sasl_channel_binding": "yes"} if channel_binding else {}
    srv = tls_server(server_factory, pki, config=cfg, start=False)
    if bob:
        srv.add_user("bob", scram_secret("bob pw"), scheme="RAW")
    srv.start()
    return srv


def fetch_args(srv, pki, tmp_path, user="alice", password="secret", tls="implicit",
               port=None, auth=None, mail="Mail"):
    a = ["--host", "127.0.0.1", "--port", str(port or (srv.tls_port if tls == "implicit" else srv.port)),
         "--tls", tls, "--tls-trust-file", pki.ca_cert, "--user", user,
         "--password-command", "echo '%s'" % password,
         "--deliver", "maildir:%s" % (tmp_path / mail), "-v"]
    if auth:
        a += ["--auth", auth]
    return a


def auth_lines(err):
    """The AUTH commands of a -v trace, without their masked payloads."""
    return [ln.split()[2] for ln in err.splitlines() if ln.startswith("C: AUTH ")]


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_auto_picks_plus_with_tls_exporter(client, server_factory, pki, tmp_path, tls):
    srv = cb_server(server_factory, pki)
    msgs = [make_message(i) for i in range(3)]
    for m in msgs:
        srv.deliver(m, user="bob")
    p = client.fetch(*fetch_args(srv, pki, tmp_path, "bob", "bob pw", tls=tls), check=0)
    assert auth_lines(p.err) == ["SCRAM-SHA-256-PLUS"], p.err
    assert "popbox: channel binding tls-exporter" in p.err
    assert "TLSv1.3" in p.err
    assert digest_counts(read_maildir(str(tmp_path / "Mail")).values()) == digest_counts(msgs)
    assert srv.message_files("bob") == {}
    # alice's {PLAIN} secret: the server derives SCRAM keys from it
    srv.deliver(msgs[0])
    p = client.fetch(*fetch_args(srv, pki, tmp_path, tls=tls, auth="scram-sha-1-plus",
                                 mail="Mail2"), check=0)
    assert auth_lines(p.err) == ["SCRAM-SHA-1-PLUS"], p.err
    assert srv.message_files() == {}


def test_tls12_uses_tls_unique(client, server_factory, pki, tmp_path):
    conf = tmp_path / "openssl-tls12.cnf"
    conf.write_text("openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\n"
                    "system_default = sys\n[sys]\nMaxProtocol = TLSv1.2\n")
    client.env["OPENSSL_CONF"] = str(conf)
    srv = cb_server(server_factory, pki)
    srv.deliver(make_message(1), user="bob")
    p = client.fetch(*fetch_args(srv, pki, tmp_path, "bob", "bob pw"), check=0)
    assert "TLSv1.2" in p.err, p.err
    assert auth_lines(p.err) == ["SCRAM-SHA-256-PLUS"], p.err
    assert "popbox: channel binding tls-unique" in p.err
    assert srv.message_files("bob") == {}
    # the same over STLS, with alice's {PLAIN} secret
    srv.deliver(make_message(2))
    p = client.fetch(*fetch_args(srv, pki, tmp_path, tls="starttls", mail="Mail2"), check=0)
    assert auth_lines(p.err) == ["SCRAM-SHA-256-PLUS"], p.err
    assert "popbox: channel binding tls-unique" in p.err
    assert srv.message_files() == {}


def test_plain_scram_says_n(client, server_factory, pki, tmp_path):
    """SCRAM without -PLUS sends the flag "n". Asked for by name against a
    server that offers -PLUS, "y" would be refused (GNU SASL on the server
    refuses "y" when it can bind): the login succeeds, so it was not "y".
    Against a server that offers no -PLUS (over TLS, and without TLS) auto
    picks SCRAM-SHA-256 and logs in."""
    srv = cb_server(server_factory, pki)
    srv.deliver(make_message(1), user="bob")
    p = client.fetch(*fetch_args(srv, pki, tmp_path, "bob", "bob pw", auth="scram-sha-256"),
                     check=0)
    assert auth_lines(p.err) == ["SCRAM-SHA-256"], p.err
    assert "channel binding" not in p.err
    assert srv.message_files("bob") == {}

    plain = cb_server(server_factory, pki, channel_binding=False)
    plain.deliver(make_message(2), user="bob")
    p = client.fetch(*fetch_args(plain, pki, tmp_path, "bob", "bob pw", mail="Mail2"), check=0)
    assert auth_lines(p.err) == ["SCRAM-SHA-256"], p.err
    assert plain.message_files("bob") == {}
    plain.deliver(make_message(3), user="bob")
    p = client.fetch(*fetch_args(plain, pki, tmp_path, "bob", "bob pw", tls="off", mail="Mail3")
                     + ["--allow-plaintext"], check=0)
    assert auth_lines(p.err) == ["SCRAM-SHA-256"], p.err


def test_plus_needs_tls(client, server_factory, pki, tmp_path):
    srv = cb_server(server_factory, pki)
    p = client.fetch(*fetch_args(srv, pki, tmp_path, "bob", "bob pw", tls="off",
                                 auth="scram-sha-256-plus") + ["--allow-plaintext"])
    assert p.returncode == 69, p.err
    assert "needs TLS with channel binding" in p.err
    assert "is not encrypted" in p.err
    assert auth_lines(p.err) == []


class TlsRelay:
    """A man in the middle with a certificate the client trusts: it ends the
    client's TLS session and opens its own to the server, relaying bytes.
    Both sessions are sound; only channel binding tells them apart. Each
    upstream connection comes from its own 127.x address, so popboxd's
    failed-login penalty does not slow the test down."""

    def __init__(self, pki, target_port):
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(pki.server[1]["cert"], pki.server[1]["key"])
        self.client_ctx = ssl.create_default_context(cafile=pki.ca_cert)
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                c.settimeout(30)
                cs = self.server_ctx.wrap_socket(c, server_side=True)
                up = self.client_ctx.wrap_socket(
                    socket.create_connection(("127.0.0.1", self.target_port), timeout=30,
                                             source_address=(fresh_source(), 0)),
                    server_hostname="localhost")
            except (OSError, ssl.SSLError):
                c.close()
                continue
            self.conns += [cs, up]
            threading.Thread(target=self._relay, args=(cs, up), daemon=True).start()

    @staticmethod
    def _relay(a, b):
        """One thread per connection: an SSLSocket must not be read and
        written from two threads at once."""
        other = {a: b, b: a}
        try:
            for _ in range(100000):
                ready = [s for s in (a, b) if s.pending()]
                if not ready:
                    ready, _, _ = select.select([a, b], [], [], 30)
                    if not ready:
                        break
                data = ready[0].recv(65536)
                if not data:
                    break
                other[ready[0]].sendall(data)
        except (OSError, ssl.SSLError):
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


def test_man_in_the_middle_is_caught(client, server_factory, pki, tmp_path):
    srv = cb_server(server_factory, pki)
    srv.deliver(make_message(1), user="bob")
    relay = TlsRelay(pki, srv.tls_port)
    try:
        p = client.fetch(*fetch_args(srv, pki, tmp_path, "bob", "bob pw", port=relay.port,
                                     auth="scram-sha-256-plus"))
        assert p.returncode == 77, p.err
        assert auth_lines(p.err) == ["SCRAM-SHA-256-PLUS"], p.err
        # auto: both -PLUS mechanisms fail, and SCRAM without binding is
        # never tried (it would let the relay strip the binding). PLAIN
        # comes next: over TLS verified against the trust file it is what
        # auto does for a server without the user's SCRAM secret, and the
        # relay holds a certificate that file trusts.
        p = client.fetch(*fetch_args(srv, pki, tmp_path, "bob", "bob pw", port=relay.port),
                         check=0)
        assert auth_lines(p.err) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "PLAIN"], p.err
        assert srv.message_files("bob") == {}
        srv.deliver(make_message(2), user="bob")
    finally:
        relay.stop()
    # straight to the server -PLUS works for the same account
    p = client.fetch(*fetch_args(srv, pki, tmp_path, "bob", "bob pw"), check=0)
    assert auth_lines(p.err) == ["SCRAM-SHA-256-PLUS"], p.err
    assert srv.message_files("bob") == {}
