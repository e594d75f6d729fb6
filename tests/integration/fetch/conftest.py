"""Fixtures for the `popbox fetch` tests (tests/integration/fetch/).

  dovecot        a real Dovecot for the whole session (skipped with a clear
                 reason when Dovecot is not installed)
  mailbox        a fresh Dovecot user with an empty Maildir (user/password)
  client         runs build/popbox with a private HOME and XDG dirs
  account_conf   writes accounts.conf for a mailbox: account_conf(mb, **keys)
"""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fetch_env  # noqa: E402


@pytest.fixture(scope="session")
def popbox_bin():
    path = fetch_env.popbox_path()
    if not os.access(path, os.X_OK):
        pytest.fail("%s is not built: run `make` first (or set POPBOX_BUILD)" % path)
    return path


@pytest.fixture(scope="session")
def dovecot(popbox_bin):
    if shutil.which("dovecot") is None:
        pytest.skip("dovecot is not installed (Debian package dovecot-pop3d)")
    d = fetch_env.Dovecot()
    try:
        d.start()
    except Exception:
        d.cleanup()
        raise
    yield d
    d.cleanup()


@pytest.fixture
def mailbox(dovecot):
    return dovecot.add_user()


@pytest.fixture
def client(tmp_path):
    return fetch_env.Client(str(tmp_path / "home"))


@pytest.fixture
def account_conf(client, dovecot, tmp_path):
    def make(mb, name="test", tls="starttls", deliver=None, extra=None, password=True):
        keys = {
            "host": "127.0.0.1",
            "port": str(dovecot.pop3s_port if tls == "implicit" else dovecot.pop3_port),
            "tls": tls,
            "tls_trust_file": dovecot.ca.ca,
            "user": mb.user,
            "deliver": deliver or "maildir:%s" % (tmp_path / "Mail"),
        }
        if password:
            keys["password"] = mb.password
        keys.update(extra or {})
        text = "[account %s]\n" % name + "".join(
            "%s = %s\n" % (k, v) for k, v in keys.items() if v is not None)
        client.write_config(text)
        return keys
    return make
