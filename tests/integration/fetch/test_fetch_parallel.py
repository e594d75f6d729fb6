"""Many accounts at once (issue 16 item 3): several Dovecot accounts
fetched concurrently (jobs = N), each in its own process with its own lock;
the worst status wins; the summary table; one progress line per account on
a terminal. Concurrency is shown by a gate in front of Dovecot that holds
every connection until `jobs` of them are open (a run that fetched one
account after another would never open the second while the first waits)."""

import os
import pty
import select
import socket
import ssl
import subprocess
import threading

from fake_pop3 import FakePop3
from fetch_env import RUNAWAY_SEC, digest_counts, make_message, read_maildir, free_port


class Gate:
    """A TCP relay to target_port that holds each connection until `want`
    are open at once (or the runaway guard passes), and records the most
    that were ever open together."""

    def __init__(self, target_port, want):
        self.target_port = target_port
        self.want = want
        self.open = 0
        self.most = 0
        self.total = 0
        self.cv = threading.Condition()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        with self.cv:
            self.open += 1
            self.total += 1
            self.most = max(self.most, self.open)
            self.cv.notify_all()
            self.cv.wait_for(lambda: self.open >= self.want, RUNAWAY_SEC)
        try:
            s = socket.create_connection(("127.0.0.1", self.target_port), timeout=RUNAWAY_SEC)
        except OSError:
            c.close()
            return
        for x in (c, s):
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = threading.Event()

        def pump(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    b.sendall(d)
            except OSError:
                pass
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            done.set()
        threading.Thread(target=pump, args=(s, c), daemon=True).start()
        pump(c, s)
        done.wait(RUNAWAY_SEC)
        c.close()
        s.close()
        with self.cv:
            self.open -= 1


def stls_context(dovecot):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(dovecot.ca.cert, dovecot.ca.key)
    return ctx


def conf_text(dovecot, port, boxes, tmp_path, jobs=None, bad=None):
    text = "jobs = %d\n" % jobs if jobs else ""
    for i, mb in enumerate(boxes):
        text += ("[account a%d]\nhost = 127.0.0.1\nport = %d\ntls = starttls\n"
                 "tls_trust_file = %s\nuser = %s\npassword = %s\ndeliver = maildir:%s\n"
                 % (i, port, dovecot.ca.ca, mb.user, mb.password, tmp_path / ("M%d" % i)))
    for name, extra in (bad or {}).items():
        text += "[account %s]\nhost = 127.0.0.1\ntls = starttls\ntls_trust_file = %s\n" \
                "deliver = maildir:%s\n%s" % (name, dovecot.ca.ca, tmp_path / name, extra)
    return text


def test_accounts_fetched_at_once_worst_status_wins(client, dovecot, tmp_path):
    boxes = [dovecot.add_user() for _ in range(3)]
    msgs = {}
    for i, mb in enumerate(boxes):
        msgs[i] = [make_message(100 * i + k, body_size=2000) for k in range(20)]
        mb.deliver_many(msgs[i])
    gate = Gate(dovecot.pop3_port, want=3)
    # a server that refuses the login (77); not Dovecot, whose failed-login
    # penalty for 127.0.0.1 would slow every later login of the test run
    refuser = FakePop3(capa=("USER", "UIDL", "STLS"), pass_reply="-ERR [AUTH] no",
                       stls_context=stls_context(dovecot))
    try:
        bad = {
            "refused": "port = %d\nuser = x\npassword = wrong\n" % refuser.port,
            # nobody listens: 75
            "down": "port = %d\nuser = x\npassword = y\n" % free_port(),
        }
        client.write_config(conf_text(dovecot, gate.port, boxes, tmp_path, jobs=3, bad=bad))
        p = client.fetch()
        assert gate.most == 3, "at most %d connections open at once (of %d)\n%s" % (
            gate.most, gate.total, p.out + p.err)
        assert p.returncode == 77, p.out + p.err     # 77 is worse than 75
        for i, mb in enumerate(boxes):
            got = read_maildir(str(tmp_path / ("M%d" % i)))
            assert digest_counts(got.values()) == digest_counts(msgs[i])
            assert mb.count() == 0
            assert "a%d: fetched 20" % i in p.out
        lines = p.out.splitlines()
        head = [ln for ln in lines if ln.startswith("ACCOUNT")]
        assert head and "STATUS" in head[0] and "FETCHED" in head[0], p.out
        table = lines[lines.index(head[0]) + 1:]
        rows = {ln.split()[0]: ln for ln in table}
        assert set(rows) == {"a0", "a1", "a2", "refused", "down"}, p.out
        assert rows["a1"].split()[1] == "ok" and rows["a1"].split()[2] == "20"
        assert "login refused (77)" in rows["refused"]
        assert "temporary failure (75)" in rows["down"]
        assert "popbox: refused: " in p.err and "popbox: down: " in p.err
        # the good accounts alone: 0; and one at a time with --jobs 1
        for mb in boxes:
            mb.deliver(make_message(999))
        gate.want = 1
        p = client.fetch("--jobs", "1", "a0", "a1", "a2", check=0)
        assert gate.most == 3
        assert all("a%d: fetched 1" % i in p.out for i in range(3))
        assert "ACCOUNT" not in p.out      # no table for a sequential run
    finally:
        gate.stop()
        refuser.stop()


def test_progress_lines_on_a_terminal(client, dovecot, tmp_path):
    boxes = [dovecot.add_user() for _ in range(2)]
    for i, mb in enumerate(boxes):
        mb.deliver_many([make_message(k, body_size=4000) for k in range(30)])
    client.write_config(conf_text(dovecot, dovecot.pop3_port, boxes, tmp_path))
    master, slave = pty.openpty()
    p = subprocess.Popen([client.bin, "fetch"], env=client.env, stdout=subprocess.PIPE,
                         stderr=slave)
    os.close(slave)
    seen = b""
    for _ in range(100000):     # until the terminal closes; a runaway guard
        r, _, _ = select.select([master], [], [], RUNAWAY_SEC)
        assert r or p.poll() is not None, "runaway guard: no output and no exit"
        if not r:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    out, _ = p.communicate(timeout=RUNAWAY_SEC)
    os.close(master)
    assert p.returncode == 0, out
    text = seen.decode(errors="replace")
    # one line per account, redrawn in place (cursor up), ending "done"
    assert "a0: done, fetched 30" in text and "a1: done, fetched 30" in text, text
    assert "\033[2A" in text, text
    assert b"ACCOUNT" in out
