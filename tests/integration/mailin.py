"""Helpers for the mail-in tests (popbox deliver and LMTP; docs/DESIGN.md
"Mail in"): run `popbox deliver` against a PopboxServer's config and read a
maildrop back over POP3.

Nothing here depends on pytest.
"""

import os
import socket
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


# ---------------------------------------------------------------- LMTP

def lmtp_stuff(body):
    """body as DATA sends it (RFC 5321 §4.5.2): a '.' at a line start (after
    CRLF) doubled, a CRLF added when body does not end in one (the
    terminator must start a line), then ".CRLF". What the server stores is
    lmtp_message(body)."""
    out = bytearray()
    at_start = True
    i = 0
    while i < len(body):
        if at_start and body[i:i + 1] == b".":
            out += b"."
        at_start = False
        out += body[i:i + 1]
        if body[i:i + 2] == b"\r\n":
            out += b"\n"
            i += 2
            at_start = True
            continue
        i += 1
    if not body.endswith(b"\r\n"):
        out += b"\r\n"
    return bytes(out) + b".\r\n"


def lmtp_message(body):
    """The message an LMTP delivery of body carries: it ends in CRLF."""
    return body if body.endswith(b"\r\n") else body + b"\r\n"


class LMTPRaw:
    """A bare LMTP connection (TCP port or unix socket path) for pipelining
    and byte-exact DATA; replies are read as (code, [lines])."""

    def __init__(self, where, timeout=RUNAWAY_SEC):
        if isinstance(where, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(where)
        else:
            self.sock = socket.create_connection(("127.0.0.1", where), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed; have %r" % self.buf)
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        """One reply, multi-line ones joined: (code, [text lines])."""
        lines = []
        while True:
            ln = self.line()
            lines.append(ln[4:])
            if ln[3:4] != b"-":
                return int(ln[:3]), lines

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def lhlo(self, name="test.example"):
        return self.cmd("LHLO " + name)

    def closed(self):
        """True once the server has closed (EOF), reading what is left."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except OSError:
            return True

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def lmtp_transaction(conn, sender, rcpts, body):
    """MAIL, RCPTs and DATA pipelined in one write (RFC 2920), then the
    message: returns (mail reply, [rcpt replies], data reply, [per-recipient
    replies after the message]) -- the last only for accepted recipients."""
    cmds = ["MAIL FROM:<%s>" % sender] + ["RCPT TO:<%s>" % r for r in rcpts] + ["DATA"]
    conn.send("".join(c + "\r\n" for c in cmds).encode())
    mail = conn.reply()
    rr = [conn.reply() for _ in rcpts]
    data = conn.reply()
    if data[0] != 354:
        return mail, rr, data, []
    conn.send(lmtp_stuff(body))
    ok = sum(1 for r in rr if r[0] == 250)
    return mail, rr, data, [conn.reply() for _ in range(ok)]
