#!/usr/bin/python3
"""Mail in, side by side (bench/README.md "Mail in"): messages delivered per
second into Maildirs

  - over LMTP: popboxd's listen_lmtp and Dovecot's lmtp service, driven by
    build/bench/lmtpload (1 and 8 connections, 4 KiB and 1 MiB messages);
  - by a delivery agent run once per message: `popbox deliver` and
    Dovecot's `dovecot-lda` (4 KiB and 1 MiB).

Both servers fsync every delivered message (popboxd always does: file,
then new/; Dovecot with mail_fsync = always), on the same file system, one
Maildir per user, eight users. Rows run alternately, the order flipping
each repetition; the table gives medians.

    python3 bench/mailin.py smoke|quick|full

smoke: popboxd only, a second per row, nothing written (checks the harness,
tests/integration/test_bench_smoke.py); quick: 3
repetitions of 3 s; full: 5 of 10 s. Results: bench/results/mailin-MODE.md
and .json. As root it installs dovecot-lmtpd and dovecot-core when missing,
and runs everything as in production: popboxd's workers and Dovecot's
delivery processes as nobody. Every process started is stopped by PID.
"""

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("POPBOX_BUILD") or os.path.join(REPO, "build")
POPBOXD = os.path.join(BUILD, "popboxd")
POPBOX = os.path.join(BUILD, "popbox")
LMTPLOAD = os.path.join(BUILD, "bench", "lmtpload")
LDA = "/usr/lib/dovecot/dovecot-lda"
AS_ROOT = os.geteuid() == 0
NUSERS = 8
PROFILES = {
    "smoke": {"reps": 1, "dur": 1.0, "dovecot": False},
    "quick": {"reps": 3, "dur": 3.0, "dovecot": True},
    "full": {"reps": 5, "dur": 10.0, "dovecot": True},
}
SIZES = (4096, 1 << 20)
PROCS = []


def log(*a):
    print("mailin:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit("mailin: %s exited (%s)" % (what, proc.returncode))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mailin: %s did not answer on port %d" % (what, port))


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def on_signal(sig, frame):
    for p in PROCS:
        stop(p)
    raise SystemExit(1)


def mail_owner():
    if AS_ROOT:
        pw = pwd.getpwnam("nobody")
        gid = grp.getgrnam("nogroup").gr_gid if "nogroup" in [g.gr_name for g in grp.getgrall()] else pw.pw_gid
        return pw.pw_name, pw.pw_uid, gid
    pw = pwd.getpwuid(os.geteuid())
    return pw.pw_name, pw.pw_uid, os.getegid()


def ensure_packages(prof):
    want = []
    if prof["dovecot"] and not os.path.exists("/usr/lib/dovecot/lmtp"):
        want.append("dovecot-lmtpd")
    if prof["dovecot"] and not os.path.exists(LDA):
        want.append("dovecot-core")
    if not want:
        return
    if not AS_ROOT:
        raise SystemExit("mailin: missing %s (apt-get install %s)" % (want, " ".join(want)))
    log("installing " + " ".join(want))
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends"] + want,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                   stdout=subprocess.DEVNULL, check=True)
    # a package may start the system Dovecot; ours runs from its own config
    subprocess.run(["systemctl", "stop", "dovecot"], stderr=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)


def make_tree(root, name):
    user, uid, gid = mail_owner()
    mail = os.path.join(root, name + "-mail")
    os.makedirs(mail)
    os.chown(mail, uid, gid)
    return mail


class Popboxd:
    name = "popboxd"

    def __init__(self, root, users):
        self.dir = os.path.join(root, "popboxd")
        os.makedirs(os.path.join(self.dir, "state"))
        self.mail = make_tree(root, "popboxd")
        self.port, self.lmtp_port = free_port(), free_port()
        user, uid, gid = mail_owner()
        lines = ["listen = 127.0.0.1:%d" % self.port,
                 "listen_lmtp = 127.0.0.1:%d" % self.lmtp_port,
                 "users = " + users, "mail = maildir:%s/%%u" % self.mail,
                 "state_dir = " + os.path.join(self.dir, "state"),
                 "run_as = " + user]
        if AS_ROOT:
            lines.append("auth_user = daemon")
            os.chown(os.path.join(self.dir, "state"), uid, gid)
        self.conf = os.path.join(self.dir, "popboxd.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        self.logf = open(os.path.join(self.dir, "popboxd.log"), "ab")
        self.proc = subprocess.Popen([POPBOXD, "-f", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        PROCS.append(self.proc)
        wait_port(self.lmtp_port, self.proc, "popboxd")

    def lda(self, user, msg_path):
        with open(msg_path, "rb") as f:
            return subprocess.run([POPBOX, "deliver", "-c", self.conf, "-f", "bench@popbox.test",
                                   user], stdin=f).returncode


class Dovecot:
    name = "Dovecot"

    def __init__(self, root, users):
        self.dir = os.path.join(root, "dovecot")
        for d in ("run", "state"):
            os.makedirs(os.path.join(self.dir, d))
        os.chmod(self.dir, 0o755)
        self.mail = make_tree(root, "dovecot")
        self.lmtp_port = free_port()
        user, uid, gid = mail_owner()
        group = grp.getgrgid(gid).gr_name
        ncpu = os.cpu_count() or 2
        conf = """# written by bench/mailin.py
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:{mail}/%u
mail_fsync = always
lmtp_rcpt_check_quota = no
# RCPT TO:<u0@popbox.test> is user u0, as popboxd's users file has it
auth_username_format = %Ln
{login_users}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {users}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  process_min_avail = {ncpu}
}}
""".format(d=self.dir, mail=self.mail, users=users, uid=user, gid=group, port=self.lmtp_port,
           ncpu=ncpu, login_users="" if AS_ROOT else
           "default_internal_user = %s\ndefault_login_user = %s\n" % (user, user))
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = None

    def start(self):
        self.logf = open(os.path.join(self.dir, "dovecot.stderr"), "ab")
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        PROCS.append(self.proc)
        wait_port(self.lmtp_port, self.proc, "Dovecot")

    def lda(self, user, msg_path):
        with open(msg_path, "rb") as f:
            return subprocess.run([LDA, "-c", self.conf, "-f", "bench@popbox.test", "-d", user],
                                  stdin=f).returncode


def lmtp_row(srv, conns, size, dur):
    r = subprocess.run([LMTPLOAD, "-p", str(srv.lmtp_port), "-c", str(conns), "-s", str(size),
                        "-d", str(dur), "-U", str(NUSERS), "-D", "popbox.test"],
                       capture_output=True, text=True, timeout=dur + 120)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise SystemExit("mailin: lmtpload against %s failed: %s %s" % (srv.name, r.stdout, r.stderr))
    kv = dict(x.split("=", 1) for x in line[0].split()[1:])
    return float(kv["rate"])


def lda_row(srv, size, dur, msg_path):
    n, start = 0, time.monotonic()
    while time.monotonic() - start < dur:
        rc = srv.lda("u%d" % (n % NUSERS), msg_path)
        if rc != 0:
            raise SystemExit("mailin: %s's delivery agent exited %d" % (srv.name, rc))
        n += 1
    return n / (time.monotonic() - start)


def message_file(root, size):
    path = os.path.join(root, "msg-%d" % size)
    body = bytearray(b"From: <bench@popbox.test>\nTo: <user@popbox.test>\nSubject: mailin\n\n")
    line = 0
    while len(body) < size:
        body += (b"." if line % 10 == 3 else b"") + bytes((97 + (line + i) % 26) for i in range(74)) + b"\n"
        line += 1
    with open(path, "wb") as f:
        f.write(body)
    return path


def fsync_calls(cmd, msg_path):
    """fsync/fdatasync calls of one delivery (strace), to show both fsync."""
    if shutil.which("strace") is None:
        return None
    with open(msg_path, "rb") as f:
        r = subprocess.run(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync"] + cmd, stdin=f,
                           capture_output=True, text=True)
    n = 0
    for l in r.stderr.splitlines():
        parts = l.split()
        if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync"):
            n += int(parts[3])
    return n


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "quick"
    if mode not in PROFILES:
        raise SystemExit("usage: mailin.py smoke|quick|full")
    prof = PROFILES[mode]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for b in (POPBOXD, POPBOX, LMTPLOAD):
        if not os.access(b, os.X_OK):
            raise SystemExit("mailin: %s is not built (make all)" % b)
    ensure_packages(prof)
    root = tempfile.mkdtemp(prefix="popbox-mailin-", dir="/var/tmp")
    os.chmod(root, 0o755)
    try:
        users = os.path.join(root, "users")
        with open(users, "w") as f:
            f.write("".join("u%d:{PLAIN}secret\n" % i for i in range(NUSERS)))
        servers = [Popboxd(root, users)]
        if prof["dovecot"]:
            servers.append(Dovecot(root, users))
        for s in servers:
            s.start()
        msgs = {size: message_file(root, size) for size in SIZES}
        rows = []
        for conns in (1, 8):
            for size in SIZES:
                rows.append(("LMTP, %d connection%s, %s" % (conns, "s" if conns > 1 else "",
                             "4 KiB" if size == 4096 else "1 MiB"),
                             lambda s, c=conns, z=size: lmtp_row(s, c, z, prof["dur"])))
        for size in SIZES:
            rows.append(("delivery agent, %s" % ("4 KiB" if size == 4096 else "1 MiB"),
                         lambda s, z=size: lda_row(s, z, prof["dur"], msgs[z])))
        results = {name: {s.name: [] for s in servers} for name, _ in rows}
        for rep in range(prof["reps"]):
            order = servers if rep % 2 == 0 else list(reversed(servers))
            for name, fn in rows:
                for s in order:
                    v = fn(s)
                    results[name][s.name].append(v)
                    log("%s: %s %.1f/s" % (name, s.name, v))
        fsyncs = {"popbox deliver": fsync_calls([POPBOX, "deliver", "-c", servers[0].conf, "u0"],
                                                msgs[4096])}
        if prof["dovecot"]:
            fsyncs["dovecot-lda"] = fsync_calls([LDA, "-c", servers[1].conf, "-d", "u0"], msgs[4096])
        table = ["| deliveries per second (median of %d × %.0f s) | %s |%s" % (
            prof["reps"], prof["dur"], " | ".join(s.name for s in servers),
            " popboxd / Dovecot |" if prof["dovecot"] else ""),
            "|---|" + "---:|" * len(servers) + ("---:|" if prof["dovecot"] else "")]
        out = {"mode": mode, "rows": {}, "fsync_calls_per_delivery": fsyncs}
        for name, _ in rows:
            med = {k: sorted(v)[len(v) // 2] for k, v in results[name].items()}
            out["rows"][name] = med
            cells = ["%.0f" % med[s.name] for s in servers]
            if prof["dovecot"]:
                cells.append("%.2f×" % (med["popboxd"] / med["Dovecot"]))
            table.append("| %s | %s |" % (name, " | ".join(cells)))
        text = "\n".join(table) + "\n\nfsync/fdatasync calls in one 4 KiB delivery by the agent: %s\n" % (
            ", ".join("%s %s" % (k, v) for k, v in fsyncs.items()))
        print(text)
        if mode == "smoke":
            return   # a harness check: no results kept
        resdir = os.path.join(REPO, "bench", "results")
        os.makedirs(resdir, exist_ok=True)
        with open(os.path.join(resdir, "mailin-%s.md" % mode), "w") as f:
            f.write(text)
        with open(os.path.join(resdir, "mailin-%s.json" % mode), "w") as f:
            json.dump(out, f, indent=1)
    finally:
        for p in PROCS:
            stop(p)
        if os.environ.get("POPBOX_MAILIN_KEEP"):
            log("kept " + root)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
