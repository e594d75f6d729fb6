"""mutt (Debian's, with GNU SASL) fetches mail from popboxd over implicit TLS
and over STLS. mutt picks SCRAM-SHA-256-PLUS when it is offered, cannot
supply tls-exporter channel binding, cancels with "*" and then reads every
later answer one line late; so popboxd offers -PLUS mechanisms only with
sasl_channel_binding = yes (docs/popboxd.conf.5).

mutt is driven without a person: `script` gives it a terminal and
`-e 'push <fetch-mail><quit>'` types the keys."""

import os
import shutil
import subprocess

import pytest

from test_server_tls_lib import PKI, tls_server

MUTT_RUNAWAY_GUARD = 180   # seconds: only ends a mutt that hangs, never a pass condition
MESSAGES = [b"Subject: one\n\nbody one\n", b"Subject: two\n\nbody two\n"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki-mutt")))


def run_mutt(tmp_path, pki, url, extra=()):
    home = tmp_path / "home"
    (home / "Mail").mkdir(parents=True)
    spool = home / "inbox"
    spool.write_bytes(b"")
    rc = home / "muttrc"
    rc.write_text("\n".join([
        'set pop_host="%s"' % url,
        'set pop_pass="secret"',
        "set pop_delete=yes",
        'set folder="%s"' % (home / "Mail"),
        'set spoolfile="%s"' % spool,
        "set mbox_type=mbox",
        'set ssl_ca_certificates_file="%s"' % pki.ca_cert,
        "set ssl_force_tls=yes",
        "set quit=yes",
        "set move=no",
    ] + list(extra)) + "\n")
    env = dict(os.environ, HOME=str(home), TERM="xterm")
    cmd = "mutt -n -F %s -e 'push <fetch-mail><quit>'" % rc
    subprocess.run(["script", "-qec", cmd, "/dev/null"], env=env, cwd=str(home),
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=MUTT_RUNAWAY_GUARD, check=False)
    return spool.read_bytes()


def check_fetched(srv, spool):
    for m in MESSAGES:
        body = m.split(b"\n\n", 1)[1]
        assert body in spool, "mutt did not fetch %r:\n%s" % (m, srv.log()[-3000:])
    assert srv.message_files() == {}, "pop_delete: the messages should be gone"


@pytest.fixture
def mutt_server(server_factory, pki):
    if shutil.which("mutt") is None or shutil.which("script") is None:
        pytest.fail("mutt and script (bsdutils) are needed: tools/debian-packages.txt")
    srv = tls_server(server_factory, pki, start=False)
    for m in MESSAGES:
        srv.deliver(m)
    srv.start()
    return srv


def test_mutt_over_implicit_tls(mutt_server, pki, tmp_path):
    spool = run_mutt(tmp_path, pki, "pops://alice@localhost:%d" % mutt_server.tls_port)
    check_fetched(mutt_server, spool)


def test_mutt_over_stls(mutt_server, pki, tmp_path):
    spool = run_mutt(tmp_path, pki, "pop://alice@localhost:%d" % mutt_server.port)
    check_fetched(mutt_server, spool)
