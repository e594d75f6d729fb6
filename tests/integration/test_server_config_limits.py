"""Start-up and SIGHUP reload accept the same files (issue 10 item 4).

The config file and the TLS PEM files have one size limit each, in
src/server/limits_popboxd.h, used by the same reader at start-up, by
`popboxd -t` and on SIGHUP; the reload message that carries them to the
children is sized from them. Before, the config could be 1 MiB at start-up
but only 128 KiB on reload, so a large config started and then failed to
reload. Here: a config of exactly the largest allowed size, with certificate
and key files of their largest allowed size (the largest reload message),
starts and reloads, and the reload is applied by the workers and the auth
process; one byte more is refused by `popboxd -t` and by a reload, which
keeps the running configuration and says so in the log.

The limits are read from the header itself, so the test follows them.
"""

import hashlib
import os
import re
import shutil
import subprocess
import types

import pytest

from popbox_server import REPO, PopboxServer
from runaway import wait_until
from test_server_tls_lib import PKI, CMD_TIMEOUT, install_cert

LIMITS_H = os.path.join(REPO, "src", "server", "limits_popboxd.h")
# A runaway guard only (the reload normally lands in milliseconds): a
# loaded machine must not fail the test, so it is generous.


def header_limit(name):
    """Value of `#define NAME (integer arithmetic)` in limits_popboxd.h."""
    with open(LIMITS_H) as f:
        text = f.read()
    m = re.search(r"^#define %s (.+)$" % re.escape(name), text, re.M)
    assert m, "%s not found in %s" % (name, LIMITS_H)
    expr = m.group(1)
    assert re.fullmatch(r"[0-9 ()*+-]+", expr), "not plain arithmetic: %r" % expr
    return int(eval(expr))  # digits and operators only (checked above)


CONFIG_MAX = header_limit("POPBOXD_CONFIG_MAX")
PEM_MAX = header_limit("POPBOXD_PEM_MAX")


def padded(text, size):
    """text followed by comment lines (and at most one blank line), exactly
    size bytes long; every line stays far below the config's line limit."""
    data = text.encode()
    assert len(data) <= size
    rest = size - len(data)
    out = [data]
    while rest > 0:
        if rest == 1:
            out.append(b"\n")          # a blank line is one byte
            break
        n = min(rest, 100)
        if rest - n == 1:
            n -= 1
        out.append(b"#" + b"p" * (n - 2) + b"\n")
        rest -= n
    data = b"".join(out)
    assert len(data) == size
    return data


def write_padded_config(srv, extra_lines=()):
    """PopboxServer.write_config, then padded to srv.pad_to bytes."""
    PopboxServer.write_config(srv, extra_lines)
    with open(srv.conf_path) as f:
        text = f.read()
    srv.write_file(srv.conf_path, padded(text, srv.pad_to), mode=0o644, own=False)


def pad_pem(srv, key, size):
    """Pad the PEM file of setting key (tls_cert or tls_key) with text after
    its last block (OpenSSL skips it) to exactly size bytes."""
    path = srv.config[key]
    with open(path, "rb") as f:
        data = f.read()
    mode = os.stat(path).st_mode & 0o777
    srv.write_file(path, padded(data.decode(), size), mode=mode, own=False)


def apop_digest(greeting, secret):
    stamp = re.search(rb"<[^>]*>", greeting).group(0)
    return hashlib.md5(stamp + secret.encode()).hexdigest()


def apop_login(srv):
    """Greeting has a timestamp and APOP logs in: both the worker (greeting)
    and the auth process (it checks apop itself) run with apop = yes."""
    with srv.connect() as c:
        if b"<" not in c.greeting:
            return False
        st = c.cmd("APOP alice " + apop_digest(c.greeting, "secret"))
        assert st.startswith(b"+OK"), st
        c.quit()
        return True


def poll(pred, srv=None):
    """Wait for pred() (runaway.wait_until); with srv, a failed reload
    notification in its log fails at once."""
    def ready():
        if srv is not None:
            assert "cannot notify child" not in srv.log(), srv.log()
        return pred()
    wait_until(ready, "the reloaded configuration in use")


def check_config(srv):
    r = subprocess.run(srv.command("-t"), capture_output=True, timeout=CMD_TIMEOUT)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed for this test")
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def padded_server(server_factory, pki):
    """Not started; its config file is always written padded to srv.pad_to
    (the largest allowed size), its certificate and key files are padded to
    theirs."""
    srv = server_factory(start=False)
    srv.pad_to = CONFIG_MAX
    srv.write_config = types.MethodType(write_padded_config, srv)
    install_cert(srv, pki.server[0])
    pad_pem(srv, "tls_cert", PEM_MAX)
    pad_pem(srv, "tls_key", PEM_MAX)
    return srv


def test_largest_config_starts_and_reloads(padded_server):
    srv = padded_server
    srv.port = 1
    srv.write_config()
    assert os.path.getsize(srv.conf_path) == CONFIG_MAX
    rc, out = check_config(srv)
    assert rc == 0, out

    srv.start()
    assert os.path.getsize(srv.conf_path) == CONFIG_MAX
    with srv.connect() as c:
        assert b"<" not in c.greeting
        c.login()
        c.quit()

    # Change a setting in the padded config: the largest reload message
    # (largest config, certificate and key) reaches every child.
    srv.config["apop"] = "yes"
    srv.write_config()
    assert os.path.getsize(srv.conf_path) == CONFIG_MAX
    srv.reload()
    poll(lambda: "configuration reloaded" in srv.log(), srv)
    for _ in range(6):    # new connections land on either worker
        poll(lambda: apop_login(srv), srv)
    log = srv.log()
    assert "cannot notify child" not in log, log
    assert "keeping the current TLS certificate" not in log, log
    assert "reload failed" not in log, log


def test_config_one_byte_over_is_refused(padded_server):
    srv = padded_server
    srv.config["apop"] = "yes"
    srv.start()
    poll(lambda: apop_login(srv))

    # One byte over the limit, with apop turned off: `popboxd -t` refuses
    # it, and so does a reload, which keeps apop = yes running.
    srv.pad_to = CONFIG_MAX + 1
    srv.config["apop"] = "no"
    srv.write_config()
    assert os.path.getsize(srv.conf_path) == CONFIG_MAX + 1
    rc, out = check_config(srv)
    assert rc == 1, out
    assert "file too large (more than %d bytes)" % CONFIG_MAX in out, out

    srv.reload()
    poll(lambda: "reload failed, keeping the running configuration" in srv.log())
    assert "file too large (more than %d bytes)" % CONFIG_MAX in srv.log()
    assert srv.alive()
    for _ in range(4):
        assert apop_login(srv), "the old configuration (apop = yes) must stay"


def test_pem_one_byte_over_is_refused(padded_server):
    srv = padded_server
    srv.port = 1
    srv.write_config()
    rc, out = check_config(srv)
    assert rc == 0, out
    pad_pem(srv, "tls_key", PEM_MAX + 1)
    rc, out = check_config(srv)
    assert rc == 1, out
    assert "file too large (more than %d bytes)" % PEM_MAX in out, out
