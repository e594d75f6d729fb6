#!/usr/bin/env python3
"""Issue 5 item 5: with 1000 slowloris connections open (each sending a byte
a second and never finishing a command), a fresh client from another address
logs in, retrieves 1 MiB and quits in under 2 seconds.

    python3 bench/slowloris.py [--build DIR] [--conns 1000] [--rounds 5]

Starts its own popboxd on a loopback port (run_as nobody when root), opens the
slow connections from 25 addresses in 127.77.0.0/16 (the per-address limit
stays at its default of 50), measures the fresh client RETR five times and
prints the median and the worst. Bounded: every loop has a count or a deadline,
and the server is stopped by PID."""
import argparse
import os
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("POPBOX_BUILD", "build"))
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 512
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard) if hard != resource.RLIM_INFINITY else want, hard))

    base = tempfile.mkdtemp(prefix="popbox-slowloris-", dir="/tmp")
    os.chmod(base, 0o755)
    maildir = os.path.join(base, "mail", "alice")
    for d in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, d))
    body = b"Subject: one mebibyte\n\n" + (b"x" * 1023 + b"\n") * 1024
    with open(os.path.join(maildir, "new", "1000.A.bench"), "wb") as f:
        f.write(body)
    with open(os.path.join(base, "users"), "w") as f:
        f.write("alice:{PLAIN}secret\n")
    os.chmod(os.path.join(base, "users"), 0o600)
    port = free_port()
    root = os.geteuid() == 0
    run_as = "nobody" if root else pwd.getpwuid(os.geteuid()).pw_name
    if root:
        nobody = pwd.getpwnam("nobody")
        for dirpath, dirs, files in os.walk(os.path.join(base, "mail")):
            os.chown(dirpath, nobody.pw_uid, nobody.pw_gid)
            for fn in files:
                os.chown(os.path.join(dirpath, fn), nobody.pw_uid, nobody.pw_gid)
        os.chmod(os.path.join(base, "mail"), 0o755)
    with open(os.path.join(base, "popboxd.conf"), "w") as f:
        f.write("listen = 127.0.0.1:%d\nusers = users\nmail = maildir:%s/mail/%%u\n"
                "state_dir = state\nrun_as = %s\nmax_connections = 5000\n" % (port, base, run_as))
        if root:   # the auth process has a user of its own (popboxd.conf(5))
            f.write("auth_user = daemon\n")
    log = open(os.path.join(base, "log"), "wb")
    proc = subprocess.Popen([os.path.join(a.build, "popboxd"), "-f", "-c",
                             os.path.join(base, "popboxd.conf")], stdout=log, stderr=log)
    slow = []
    stop = threading.Event()
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        for i in range(a.conns):
            src = "127.77.%d.%d" % (1 + i // 40 // 250, 1 + (i // 40) % 250)
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
            s.setblocking(False)
            slow.append(s)

        def drip():
            # one byte a second on every slow connection, never a newline
            for _ in range(60):
                if stop.wait(1.0):
                    return
                for s in slow:
                    try:
                        s.send(b"N")
                    except OSError:
                        pass
        t = threading.Thread(target=drip, daemon=True)
        t.start()
        time.sleep(1.5)

        times = []
        for r in range(a.rounds):
            t0 = time.monotonic()
            c = socket.create_connection(("127.0.0.1", port), timeout=10,
                                         source_address=("127.88.0.%d" % (r + 1), 0))
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            f = c.makefile("rb")
            assert f.readline().startswith(b"+OK")
            c.sendall(b"USER alice\r\nPASS secret\r\nRETR 1\r\n")
            assert f.readline().startswith(b"+OK")
            assert f.readline().startswith(b"+OK"), "login"
            assert f.readline().startswith(b"+OK"), "RETR"
            got = 0
            while True:
                line = f.readline()
                if line in (b".\r\n", b""):
                    break
                got += len(line)
            c.sendall(b"QUIT\r\n")
            f.readline()
            c.close()
            times.append(time.monotonic() - t0)
            assert got >= len(body), got
        open_slow = sum(1 for s in slow if s.fileno() >= 0)
        print("slowloris: %d slow connections open; fresh login+RETR 1 MiB+QUIT: median %.3f s, "
              "worst %.3f s over %d rounds (target < 2 s): %s" %
              (open_slow, statistics.median(times), max(times), len(times),
               "met" if max(times) < 2 else "NOT met"))
        return 0 if max(times) < 2 else 1
    finally:
        stop.set()
        for s in slow:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
