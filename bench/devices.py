#!/usr/bin/python3
"""bench/devices.py [smoke|quick|full] — what per-device views cost
(issue 11, docs/DESIGN.md "Every device gets every message").

One popboxd (one worker), one big Maildir (100,000 messages in quick and
full, 2,000 in smoke), the same user logging in as the classic session and
as three devices (phone, laptop, work: all known, none has deleted
anything). Alternating, median of the repetitions:

  login..LIST  connect, USER/PASS, LIST read to its end (warm index)
  QUIT         after one DELE: the time from QUIT to its +OK. Classic: the
               file is unlinked and the directories fsynced; device: the
               deletion is appended and fdatasynced (the others still hold
               the message, so no file goes)

Targets (issue 11): device QUIT <= 2x classic QUIT; device login..LIST <=
1.2x classic. Prints a table and exits 1 when a target is missed (not in
smoke). Every process it starts is stopped by PID."""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("POPBOX_BUILD") or os.path.join(REPO, "build")
PROFILES = {"smoke": (2000, 3), "quick": (100000, 7), "full": (100000, 15)}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.f = self.s.makefile("rb")
        self.line()

    def line(self):
        ln = self.f.readline()
        if not ln:
            raise RuntimeError("connection closed")
        return ln

    def cmd(self, c):
        self.s.sendall(c.encode() + b"\r\n")
        st = self.line()
        if not st.startswith(b"+OK"):
            raise RuntimeError("%s: %r" % (c, st))
        return st

    def multi(self, c):
        self.cmd(c)
        n = 0
        while self.line() != b".\r\n":
            n += 1
        return n

    def close(self):
        self.f.close()
        self.s.close()


def login_list(port, user):
    t0 = time.perf_counter()
    c = Conn(port)
    c.cmd("USER " + user)
    c.cmd("PASS secret")
    n = c.multi("LIST")
    return c, (time.perf_counter() - t0) * 1000, n


def quit_after_dele(port, user):
    """A session that deletes its first message; ms from QUIT to +OK."""
    for _ in range(200):
        try:
            c, _, n = login_list(port, user)
            break
        except RuntimeError as e:
            if "IN-USE" not in str(e):
                raise
            time.sleep(0.01)
    c.cmd("DELE 1")
    t0 = time.perf_counter()
    c.cmd("QUIT")
    ms = (time.perf_counter() - t0) * 1000
    c.close()
    return ms


def session(port, user):
    for _ in range(200):
        try:
            c, ms, n = login_list(port, user)
            c.cmd("QUIT")
            c.close()
            return ms, n
        except RuntimeError as e:
            if "IN-USE" not in str(e):
                raise
            time.sleep(0.01)
    raise RuntimeError("maildrop stayed locked")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "quick"
    nmsgs, reps = PROFILES[mode]
    root = tempfile.mkdtemp(prefix="popbox-bench-devices-", dir="/var/tmp")
    proc = None
    try:
        os.chmod(root, 0o755)
        md = os.path.join(root, "mail", "alice")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub))
        body = b"Subject: bench\n\n" + b"x" * 2000 + b"\n"
        for i in range(nmsgs):
            with open(os.path.join(md, "cur", "%d.M%06d.bench:2,S" % (1700000000 + i, i)), "wb") as f:
                f.write(body)
        run_as = "nobody" if os.geteuid() == 0 else None
        if run_as:
            subprocess.run(["chown", "-R", "nobody:nogroup", os.path.join(root, "mail")], check=True)
        with open(os.path.join(root, "users"), "w") as f:
            f.write("alice:{PLAIN}secret\n")
        os.chmod(os.path.join(root, "users"), 0o600)
        port = free_port()
        state = os.path.join(root, "state")
        os.makedirs(state)
        with open(os.path.join(root, "popboxd.conf"), "w") as f:
            f.write("listen = 127.0.0.1:%d\nusers = %s/users\nmail = maildir:%s/mail/%%u\n"
                    "state_dir = %s\nworkers = 1\n" % (port, root, root, state))
            if run_as:
                f.write("run_as = nobody\nauth_user = daemon\n")
        log = open(os.path.join(root, "popboxd.log"), "wb")
        proc = subprocess.Popen([os.path.join(BUILD, "popboxd"), "-f", "-c",
                                 os.path.join(root, "popboxd.conf")], stdout=log, stderr=log)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        # warm the index, make the devices known
        for u in ("alice", "alice#phone", "alice#laptop", "alice#work"):
            session(port, u)
            session(port, u)
        lc, ld, qc, qd = [], [], [], []
        for r in range(reps):
            pairs = [("alice", lc), ("alice#phone", ld)]
            for u, out in (pairs if r % 2 == 0 else pairs[::-1]):
                out.append(session(port, u)[0])
            qpairs = [("alice", qc), ("alice#phone", qd)]
            for u, out in (qpairs if r % 2 == 0 else qpairs[::-1]):
                out.append(quit_after_dele(port, u))
        m = statistics.median
        rows = [("login..LIST ms, %d messages" % nmsgs, m(lc), m(ld), 1.2),
                ("QUIT after one DELE ms", m(qc), m(qd), 2.0)]
        print("| %s | classic | device (3 known) | ratio | target |" % "scenario")
        print("|---|---|---|---|---|")
        ok = True
        for name, c, d, target in rows:
            ratio = d / c if c > 0 else float("inf")
            ok &= ratio <= target
            print("| %s | %.1f | %.1f | %.2f | <= %.1f |" % (name, c, d, ratio, target))
        if not ok and mode != "smoke":
            print("devices bench: a target was missed", file=sys.stderr)
            return 1
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
