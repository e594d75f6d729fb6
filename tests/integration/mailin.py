"""Helpers for the mail-in tests (popbox deliver and LMTP; docs/DESIGN.md
"Mail in"): run `popbox deliver` against a PopboxServer's config and read a
maildrop back over POP3.

Nothing here depends on pytest.
"""

import os
import subprocess

from popbox_server import build_dir, wire_form  # noqa: F401  (re-exported)
from runaway import RUNAWAY_SEC

# Bodies that exercise every line-end and byte case a delivery must keep
# (common/eol.h, common/wire.h): what POP3 sends is wire_form() of them.
AWKWARD_BODIES = {
    "lf": b"Subject: lf\n\nline one\nline two\n",
    "crlf": b"Subject: crlf\r\n\r\nline one\r\nline two\r\n",
    "mixed": b"Subject: mixed\r\n\nbare\rcr\r\r\nx\r\r\r\n",
    "8bit": "Subject: 8bit\n\nGr\u00fc\u00dfe, \u00e9t\u00e9\n".encode("utf-8") + bytes(range(128, 256)) + b"\n",
    "nul": b"Subject: nul\n\na\x00b\n\x00\n",
    "no-final-newline": b"Subject: last\n\nno newline at the end",
    "final-cr": b"Subject: cr\n\nends in cr\r",
    "dots": b"Subject: dots\n\n.\n..\n.leading dot\n. \n",
    "empty-body": b"Subject: empty\n\n",
}


def popbox_path():
    return os.path.join(build_dir(), "popbox")


def deliver(srv, user, data, *args, env=None):
    """Run `popbox deliver -c CONF ARGS USER < data`; returns the
    CompletedProcess (returncode, stderr)."""
    srv.write_config()
    cmd = [popbox_path(), "deliver", "-c", srv.conf_path] + list(args) + [user]
    return subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=RUNAWAY_SEC, env=env)


def fetch_all(srv, user="alice", password="secret"):
    """Every message of user's maildrop over POP3, in order (unstuffed wire
    octets), then QUIT without deleting."""
    with srv.connect() as c:
        c.login(user, password)
        n, _ = c.stat()
        out = [c.retr(i) for i in range(1, n + 1)]
        c.quit()
    return out


def stray_files(maildir):
    """Files in tmp/ (a delivery must never leave one)."""
    return os.listdir(os.path.join(maildir, "tmp"))
