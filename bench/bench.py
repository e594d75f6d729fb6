#!/usr/bin/env python3
"""popbox benchmark driver (run through bench/run.sh: smoke, quick, full).

Starts popboxd and Dovecot (from their own configs in a temporary directory,
on loopback high ports, same users file, same Maildirs) and, as root in quick
and full, popa3d (the Debian package unpacked, inetd mode under socat, system
users via PAM, the same messages as mbox spools in /var/mail), runs every
scenario of build/bench/pop3load against all of them alternately (the order
flips every repetition), measures the machine's limits with the same harness
(loopback TCP stream, ideal in-memory POP3 server) and prints one table:
scenario, popboxd, Dovecot, popa3d, ratio (popboxd vs Dovecot), vs popa3d,
fraction of the limit. Figures are medians.

Every process started here is stopped by PID (try/finally and signal
handlers); every load loop is bounded by a duration. The system users and
spools made for popa3d are removed at exit, also on error or signal.
"""

import csv
import fcntl
import json
import os
import platform
import pwd
import grp
import re
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
POP3LOAD = os.path.join(BUILD, "bench", "pop3load")
POPBOXD = os.path.join(BUILD, "popboxd")
POPBOX = os.path.join(BUILD, "popbox")
MKCORPUS = os.path.join(REPO, "bench", "mkcorpus")
AS_ROOT = os.geteuid() == 0

PROFILES = {
    # reps: repetitions per scenario (medians); dur: seconds per load run
    "smoke": dict(reps=1, dur=1.0, sess_users=4, sess_clients=4, retr_msgs=20,
                  big_msgs=0, m1_msgs=0, idle=[20], sweep=[], hashed=False,
                  dovecot=False, popa3d=False, limits=False, clients=False, tls=True,
                  tls_certs=["ECDSA P-256"], tls_groups=["X25519"], mbox_msgs=[300], floor=True),
    "quick": dict(reps=3, dur=2.0, sess_users=64, sess_clients=64, retr_msgs=400,
                  big_msgs=20000, m1_msgs=10, idle=[500, 2000], sweep=[1, 8, 64],
                  hashed=True, dovecot=True, popa3d=True, limits=True, clients=True, tls=True,
                  tls_certs=["RSA-2048", "ECDSA P-256"], tls_groups=["X25519", "P-256"],
                  fetch_4k=2000, fetch_1m=20, fetch_accts=500, mbox_msgs=[20000]),
    "full": dict(reps=5, dur=4.0, sess_users=64, sess_clients=64, retr_msgs=1000,
                 big_msgs=100000, m1_msgs=20, idle=[1000, 10000, 50000],
                 sweep=[1, 16, 64, 256, 1024], hashed=True, dovecot=True, popa3d=True, limits=True,
                 clients=True, tls=True, tls_certs=["RSA-2048", "ECDSA P-256"],
                 tls_groups=["X25519", "P-256"], fetch_4k=2000, fetch_1m=20, fetch_accts=500,
                 mbox_msgs=[20000, 100000]),
}

PROCS = []          # Popen objects we started, stopped by PID at exit
CLEANUP = []        # callables undoing system changes (popa3d's users, spools), run after PROCS
FORKERS = []        # servers whose sessions outlive the listener (popa3d): .stop() first
# POPBOX_BENCH_ONLY=fetch,retr,... runs only these sections (results go to
# bench/results/MODE-SECTIONS.*, no chart); the default runs all: limits
# sessions retr tls peruser bigbox mbox memory fetch
ONLY = set(filter(None, os.environ.get("POPBOX_BENCH_ONLY", "").split(",")))


SHORT = []          # POPBOX_BENCH_REPS/_DUR overrides: a development run, no history


def want(section):
    return not ONLY or section in ONLY


TMP = None


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15.0, what="server"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s during start-up" % (what, proc.returncode))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.makefile("rb").readline().startswith(b"+OK"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("%s not answering on port %d" % (what, port))


def stop(proc, timeout=15.0):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop_all():
    for s in FORKERS:
        try:
            s.stop()
        except Exception as e:
            log("stopping %s: %s" % (s.name, e))
    for p in reversed(PROCS):
        try:
            stop(p)
        except Exception as e:      # keep stopping the others
            log("stopping %d: %s" % (p.pid, e))
    PROCS.clear()


def cleanup_all():
    """Undo system changes (newest first): bench users, their mbox spools,
    popa3d's privilege-separation user and chroot directory."""
    while CLEANUP:
        fn = CLEANUP.pop()
        try:
            fn()
        except Exception as e:      # keep undoing the others
            log("cleanup: %s" % e)


def on_signal(sig, frame):
    stop_all()
    cleanup_all()
    sys.exit(128 + sig)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def descendants(pid):
    """pid and all its descendants (via /proc/*/stat ppid)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pss_kib(pid):
    """PSS (KiB) summed over pid and its descendants."""
    total = 0
    for p in descendants(pid):
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid):
    """CPU seconds (user + system) spent by pid's process tree so far: for
    every live process of the tree its own utime+stime and the cutime+cstime
    of the children it has reaped (Dovecot's pop3 processes that exit after
    100 sessions, popa3d's process per session under socat), so a process
    that ends during a run is still counted. Threads are in their process's
    figures."""
    total = 0
    for p in descendants(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the ")": state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def pop3load(mode, port, *args, timeout_pad=60, check=True, srv=None):
    """Runs pop3load, returns its RESULT as a dict. With srv (a Server), also
    cpu_us: the server's CPU time over the run (its whole process tree,
    tree_cpu) per operation (session, or message for retr), in µs: robust
    where the load generator competes with the server for the two cores."""
    cmd = [POP3LOAD, mode, "-p", str(port)] + [str(a) for a in args]
    cpu0 = tree_cpu(srv.pid()) if srv else None
    dur = 5.0
    if "-d" in cmd:
        dur = float(cmd[cmd.index("-d") + 1])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=dur * 3 + timeout_pad)
    m = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if not m:
        raise RuntimeError("pop3load %s: no result (exit %d): %s" % (mode, r.returncode, r.stderr[-2000:]))
    res = dict(kv.split("=", 1) for kv in m[-1].split()[1:])
    for k, v in list(res.items()):
        try:
            res[k] = float(v)
        except ValueError:
            pass
    res["exit"] = r.returncode
    if srv and res.get("ops"):
        res["cpu_us"] = (tree_cpu(srv.pid()) - cpu0) * 1e6 / res["ops"]
    if check and r.returncode != 0:
        log("pop3load %s on %d exited %d: %s %s" % (mode, port, r.returncode, m[-1], r.stderr[-500:]))
    return res


# ------------------------------------------------------------------ servers

class Server:
    """What the scenarios use of a server: port(s), pid(), stop(), user
    prefix; subclasses start it."""
    proc = None

    def spawn(self, cmd, logname, what, settle):
        self.logf = open(os.path.join(self.dir, logname), "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        PROCS.append(self.proc)
        wait_port(self.port, self.proc, what=what)
        time.sleep(settle)

    def stop(self):
        stop(self.proc)

    def pid(self):
        return self.proc.pid

    def upfx(self, prefix):
        return prefix


class Popboxd(Server):
    name = "popboxd"

    def __init__(self, root, users, mail, cert, key):
        self.dir = os.path.join(root, "popboxd")
        os.makedirs(os.path.join(self.dir, "state"), exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port()
        self.mail = mail
        lines = [
            "listen = 127.0.0.1:%d" % self.port,
            "users = %s" % users,
            "mail = maildir:%s/%%u" % mail,
            "state_dir = %s" % os.path.join(self.dir, "state"),
            "max_connections = 60000",
            "max_connections_per_ip = 60000",
            "idle_timeout = 10m",
            "login_timeout = 180s",
        ]
        self.cert = (cert, key)
        if cert:
            lines += ["listen_tls = 127.0.0.1:%d" % self.tls_port,
                      "tls_cert = %s" % cert, "tls_key = %s" % key]
        else:
            self.tls_port = None
        if AS_ROOT:
            lines.append("run_as = nobody")
            lines.append("auth_user = daemon")   # a user of its own (popboxd.conf(5))
            own(os.path.join(self.dir, "state"))
        else:
            lines.append("run_as = %s" % pwd.getpwuid(os.geteuid()).pw_name)
        self.conf = os.path.join(self.dir, "popboxd.conf")
        self.lines = lines
        self.workers = None
        self.write_conf()
        self.proc = None

    def set_cert(self, cert, key):
        """Serve this certificate from the next start on."""
        self.lines = [l.replace(self.cert[0], cert).replace(self.cert[1], key) for l in self.lines]
        self.cert = (cert, key)
        self.write_conf()

    def write_conf(self):
        extra = ["workers = %d" % self.workers] if self.workers else []
        with open(self.conf, "w") as f:
            f.write("\n".join(self.lines + extra) + "\n")

    def fit_sessions(self, k):
        """Enough workers that k idle sessions fit under this process's
        open-file limit, which popboxd can raise only with CAP_SYS_RESOURCE:
        a worker accepts a connection only while it has 5 descriptors for
        it beyond 64 of its own (POPBOXD_FDS_PER_SESSION, _SPARE in
        src/server/limits_popboxd.h); one worker per core when they fit
        anyway."""
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        ncpu = os.cpu_count() or 1
        need = -(-k // max(1, (soft - 64) // 5 - 16))
        self.workers = need if need > ncpu else None
        if self.workers:
            log("popboxd: %d workers for %d sessions (open file limit %d)" % (self.workers, k, soft))
        self.write_conf()

    def start(self):
        self.spawn([POPBOXD, "-f", "-c", self.conf], "popboxd.log", "popboxd", 0.3)

    def forget_index(self, user):
        try:
            os.unlink(os.path.join(self.mail, user, "popbox.index"))
        except FileNotFoundError:
            pass


class PopboxdPerUser(Popboxd):
    """popboxd with session_process = per-user: every login gets a process
    of its own (docs/DESIGN.md "A process per user session"). As root the
    users file gets uid/gid fields (nobody's, the owner of the bench
    Maildirs); otherwise the processes run as the invoking user."""
    name = "popboxd per-user"

    def __init__(self, root, users, mail, cert, key, linger=None):
        if linger is not None:
            self.name = "popboxd per-session"
        if AS_ROOT:
            pw = pwd.getpwnam("nobody")
            pu = os.path.join(root, "users-peruser")
            with open(users) as src, open(pu, "w") as dst:
                for line in src:
                    dst.write("%s:%d:%d\n" % (line.rstrip("\n"), pw.pw_uid, pw.pw_gid))
            os.chmod(pu, 0o600)
            users = pu
        sub = os.path.join(root, "peruser" if linger is None else "persession")
        os.makedirs(sub, exist_ok=True)
        super().__init__(sub, users, mail, cert, key)
        self.lines.append("session_process = per-user")
        if linger is not None:
            self.lines.append("session_process_linger = %s" % linger)
        self.write_conf()


class FileFloor(Server):
    """The floor for RETR from a Maildir (pop3load file-server): open, pread,
    close, popbox's CRLF/dot-stuffing encoder and a write per message, with
    no index, no session state and no library event loop. With loop=False a
    thread per connection blocks in read (160 threads), with loop=True two
    epoll loops (one per vCPU, as popboxd's workers) serve every connection.
    It serves the same untouched Maildirs (users PREFIX0..7) as the servers."""

    def __init__(self, root, mail, prefix, loop):
        self.name = "floor, 2 event loops" if loop else "floor, thread per connection"
        self.dir = os.path.join(root, "floor")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.tls_port = None
        self.cmd = [POP3LOAD, "file-server", "-p", str(self.port), "-M", os.path.join(mail, "%u"),
                    "-u", prefix, "-U", "8", "-c", "2" if loop else "160", "-d", "3600"]
        if loop:
            self.cmd.append("-e")

    def start(self):
        self.spawn(self.cmd, "floor.log", self.name, 0.3)


class Dovecot(Server):
    name = "Dovecot"

    def __init__(self, root, users, mail, cert, key, max_sessions):
        self.dir = os.path.join(root, "dovecot")
        for d in ("run", "state"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.tls_port = free_port()
        self.mail = mail
        uid = "nobody" if AS_ROOT else pwd.getpwuid(os.geteuid()).pw_name
        gid = grp.getgrgid(pwd.getpwnam(uid).pw_gid).gr_name
        procs = max_sessions + 200
        dh = "/usr/share/dovecot/dh.pem"
        conf = """# written by bench/bench.py: Dovecot tuned as issue 6 asks
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = pop3
listen = 127.0.0.1
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 10M
auth_cache_ttl = 1 hour
mail_location = maildir:{mail}/%u
mail_fsync = optimized
mail_max_userip_connections = {procs}
pop3_uidl_format = %f
default_process_limit = {procs}
default_client_limit = {clients}
default_vsz_limit = 1G
{login_users}
ssl = {ssl}
{ssl_conf}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {users}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = {ncpu}
  process_limit = {ncpu}
  client_limit = {clients}
}}
service pop3 {{
  process_limit = {procs}
  client_limit = 1
  # reuse mail processes (no fork+exec per session), kept warm
  service_count = 100
  process_min_avail = {ncpu}
}}
service auth {{
  client_limit = {clients}
}}
service anvil {{
  client_limit = {clients}
}}
""".format(d=self.dir, mail=mail, users=users, uid=uid, gid=gid, procs=procs,
           clients=procs * 2 + 1000, port=self.port, tls_port=self.tls_port,
           ncpu=os.cpu_count() or 2, ssl="yes" if cert else "no",
           ssl_conf=("ssl_cert = <%s\nssl_key = <%s\n" % (cert, key) +
                     ("ssl_dh = <%s\n" % dh if os.path.exists(dh) else "")) if cert else "",
           login_users="" if AS_ROOT else "default_internal_user = %s\ndefault_login_user = %s\n" % (uid, uid))
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.cert = (cert, key)
        with open(self.conf, "w") as f:
            f.write(conf)
        if not cert:
            self.tls_port = None
        self.proc = None

    def set_cert(self, cert, key):
        """Serve this certificate from the next start on."""
        with open(self.conf) as f:
            conf = f.read()
        conf = conf.replace("ssl_cert = <%s\n" % self.cert[0], "ssl_cert = <%s\n" % cert)
        conf = conf.replace("ssl_key = <%s\n" % self.cert[1], "ssl_key = <%s\n" % key)
        with open(self.conf, "w") as f:
            f.write(conf)
        self.cert = (cert, key)

    def start(self):
        self.spawn(["dovecot", "-F", "-c", self.conf], "dovecot.stderr", "Dovecot", 0.5)

    def forget_index(self, user):
        md = os.path.join(self.mail, user)
        for f in os.listdir(md):
            if f.startswith("dovecot"):
                p = os.path.join(md, f)
                if os.path.isdir(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)


class PopboxdMbox(Popboxd):
    """popboxd serving mbox spools (mail = mbox:DIR/%u, default mbox_format)
    for the users of the bench's users file: virtual users in the workers,
    run_as nobody as root, so the figures are the mbox store's own (no PAM,
    no session process). Its index is SPOOL.popbox-index* beside the spool."""
    name = "popboxd"

    def __init__(self, root, users, spools):
        super().__init__(os.path.join(root, "popboxd-mbox"), users, spools, None, None)
        self.spools = spools
        self.lines = [("mail = mbox:%s/%%u" % spools) if l.startswith("mail = ") else l
                      for l in self.lines]
        self.write_conf()

    def forget_index(self, user):
        for f in os.listdir(self.spools):
            if f.startswith(user + ".popbox-index"):
                os.unlink(os.path.join(self.spools, f))


class DovecotMbox(Dovecot):
    """Dovecot on the same mbox spools: mail_location = mbox:FOLDERS/%u:
    INBOX=SPOOL/%u:INDEX=INDEX/%u (its index in a directory of its own),
    default mbox settings (dirty syncs, lazy writes, dot-lock + fcntl for
    writes), pop3_uidl_format = %08Xu%08Xv (its default; %f is Maildir's),
    pop3_no_flag_updates = yes: popboxd and popa3d never write Status:
    headers into the spool, and without it Dovecot rewrites the mbox at the
    end of every session that read a message."""

    def __init__(self, root, users, spools, max_sessions):
        base = os.path.join(root, "dovecot-mbox")
        self.folders = os.path.join(base, "folders")
        self.index = os.path.join(base, "index")
        for d in (self.folders, self.index):
            os.makedirs(d)
            own(d)
        super().__init__(base, users, self.folders, None, None, max_sessions)
        self.spools = spools
        with open(self.conf) as f:
            conf = f.read()
        conf = conf.replace("mail_location = maildir:%s/%%u\n" % self.folders,
                            "mail_location = mbox:%s/%%u:INBOX=%s/%%u:INDEX=%s/%%u\n"
                            "pop3_no_flag_updates = yes\n" % (self.folders, spools, self.index))
        conf = conf.replace("pop3_uidl_format = %f\n", "pop3_uidl_format = %08Xu%08Xv\n")
        assert "mbox:" in conf and "%08Xu" in conf
        with open(self.conf, "w") as f:
            f.write(conf)

    def forget_index(self, user):
        for d in (self.index, self.folders):
            shutil.rmtree(os.path.join(d, user), ignore_errors=True)


def mbox_prefix(prof, n):
    """The corpus prefix of the mbox section's n-message user: the big
    maildrop's (b, 2 KiB messages) when it has n messages, else x (one
    other size per profile)."""
    return "b" if n == prof["big_msgs"] else "x"


class SkipPopa3d(Exception):
    pass


POPA3D_IDLE_USERS = 64     # idle sessions share 64 users (concurrent sessions of a user are fine)
POPA3D_PFX = "pbb"          # system users pbbr0, pbbs12, ...: "pbb" + corpus prefix + index
POPA3D_GECOS = "popbox bench user (bench/bench.py), safe to delete"


class Popa3d(Server):
    """popa3d (Debian package, unpacked with apt-get download + dpkg -x, not
    installed: it conflicts with dovecot-pop3d) in inetd mode under socat,
    process per session: `socat TCP-LISTEN:PORT,fork,nodelay
    EXEC:popa3d,nofork` hands the accepted socket itself to popa3d as
    stdin/stdout (no relay process). Authentication is PAM (service popa3d;
    /etc/pam.d/popa3d is not installed, so PAM's `other` = common-auth,
    pam_unix against /etc/shadow), the maildrop is the mbox spool
    /var/mail/USER (compiled in), so the bench makes system users
    pbb<prefix><n> with the same password and converts the same corpus
    messages to mbox spools; both are removed at exit (also on error or
    signal). As root only."""
    name = "popa3d"

    def __init__(self, root, corpus_mail, users_file, prefixes):
        if not AS_ROOT:
            raise SkipPopa3d("not root (needs system users, /var/mail spools and PAM)")
        # the users pbb*, their spools and user popa3d are machine-wide: one
        # bench run at a time uses them (released last, after the clean-up)
        self.lockf = open("/run/lock/popbox-bench-popa3d.lock" if os.path.isdir("/run/lock")
                          else "/tmp/popbox-bench-popa3d.lock", "w")
        try:
            fcntl.flock(self.lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lockf.close()
            raise SkipPopa3d("another bench run holds the popa3d users (%s)" % self.lockf.name)
        CLEANUP.append(self.lockf.close)
        self.dir = os.path.join(root, "popa3d")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.tls_port = None
        self.proc = None
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not shutil.which("socat"):
            log("installing socat")
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "socat"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not shutil.which("socat"):
                raise SkipPopa3d("socat missing and apt-get install socat failed")
        deb = self.download(env)
        run(["dpkg-deb", "-x", deb, os.path.join(self.dir, "root")])
        self.binary = os.path.join(self.dir, "root", "usr", "sbin", "popa3d")
        if not os.access(self.binary, os.X_OK):
            raise SkipPopa3d("no usr/sbin/popa3d in %s" % deb)
        self.version = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True,
                                      text=True).stdout.strip()
        log("popa3d %s unpacked from %s" % (self.version, os.path.basename(deb)))
        self.system_setup()
        self.make_users(corpus_mail, users_file, prefixes)

    def download(self, env):
        for attempt in range(2):
            r = subprocess.run(["apt-get", "download", "popa3d"], cwd=self.dir, env=env,
                               capture_output=True, text=True)
            debs = [f for f in os.listdir(self.dir) if f.startswith("popa3d_") and f.endswith(".deb")]
            if r.returncode == 0 and debs:
                return os.path.join(self.dir, debs[0])
            if attempt == 0:
                log("apt-get download popa3d failed (%s); apt-get update" % r.stderr.strip()[-200:])
                subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        raise SkipPopa3d("apt-get download popa3d failed: %s" % r.stderr.strip()[-300:])

    def system_setup(self):
        # popa3d drops the AUTHORIZATION state to user popa3d, chrooted to
        # /var/lib/popa3d (compiled in); the package's postinst would make both
        try:
            pwd.getpwnam("popa3d")
        except KeyError:
            run(["useradd", "--system", "-M", "-d", "/var/lib/popa3d", "-s", "/usr/sbin/nologin",
                 "-c", POPA3D_GECOS, "popa3d"])
            CLEANUP.append(lambda: self.remove_user("popa3d", spool=False))
        if not os.path.isdir("/var/lib/popa3d"):
            os.makedirs("/var/lib/popa3d", 0o755)
            CLEANUP.append(lambda: os.rmdir("/var/lib/popa3d"))

    def make_users(self, corpus_mail, users_file, prefixes):
        """prefixes: {corpus prefix: count}. Users pbb<prefix><n> get the
        corpus user's password: the same SHA512-CRYPT hash for the hashed
        ("h") users; PLAIN users get an MD5-crypt hash of the same password,
        the cheapest scheme pam_unix verifies (a system user cannot have a
        plain-text password)."""
        hashes = {}
        with open(users_file) as f:
            for line in f:
                u, _, field = line.rstrip("\n").partition(":")
                hashes[u] = field
        md5 = subprocess.run(["openssl", "passwd", "-1", "-stdin"], input="secret", capture_output=True,
                             text=True, check=True).stdout.strip()
        t0 = time.monotonic()
        mail_gid = grp.getgrnam("mail").gr_gid
        names = []
        for prefix, count in prefixes.items():
            for i in range(count):
                names.append(("%s%s%d" % (POPA3D_PFX, prefix, i), "%s%d" % (prefix, i)))
        for name, _ in names:
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                pw = None
            if pw is not None:
                if pw.pw_gecos != POPA3D_GECOS:
                    raise SkipPopa3d("user %s exists and is not a bench user" % name)
                # left over by a killed run: ours to reuse, removed at the end
                if os.path.exists(os.path.join("/var/mail", name)):
                    os.unlink(os.path.join("/var/mail", name))
            else:
                run(["useradd", "-M", "-N", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "-c",
                     POPA3D_GECOS, name])
            CLEANUP.append(lambda name=name: self.remove_user(name))
        pwlines = []
        spool_bytes = quoted = 0
        for name, cuser in names:
            field = hashes[cuser]
            h = field[len("{SHA512-CRYPT}"):] if field.startswith("{SHA512-CRYPT}") else md5
            pwlines.append("%s:%s\n" % (name, h))
            b, q = maildir_to_mbox(os.path.join(corpus_mail, cuser), os.path.join("/var/mail", name),
                                   pwd.getpwnam(name).pw_uid, mail_gid)
            spool_bytes += b
            quoted += q
        subprocess.run(["chpasswd", "-e"], input="".join(pwlines), text=True, check=True)
        log("popa3d: %d system users and mbox spools (%.1f MB, %d >From-quoted lines) in %.1fs"
            % (len(names), spool_bytes / 1e6, quoted, time.monotonic() - t0))

    @staticmethod
    def remove_user(name, spool=True):
        if spool:
            try:
                os.unlink(os.path.join("/var/mail", name))
            except FileNotFoundError:
                pass
        for attempt in range(3):
            r = subprocess.run(["userdel", name], stderr=subprocess.PIPE, text=True)
            if r.returncode == 0:
                return
            # still running as the user: session processes of our popa3d
            uid = pwd.getpwnam(name).pw_uid
            for pid in pids_of_uid(uid):
                try:
                    os.kill(pid, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        log("userdel %s failed: %s" % (name, r.stderr.strip()))

    def start(self):
        self.logf = open(os.path.join(self.dir, "socat.log"), "ab")
        # nodelay: TCP_NODELAY on the accepted socket popa3d writes to. Without
        # it, popa3d's small writes of a multi-line reply wait for the client's
        # delayed ACK: 40 ms per UIDL/LIST/RETR, whatever the client sets.
        self.proc = subprocess.Popen(
            ["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay" % self.port,
             "EXEC:%s,nofork" % self.binary],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
        PROCS.append(self.proc)
        if self not in FORKERS:
            FORKERS.append(self)
        wait_port(self.port, self.proc, what="popa3d (socat)")
        time.sleep(0.2)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        # the session processes are socat's children (popa3d exec'd in the
        # forked socat): stop them by PID too, they outlive the listener
        kids = [p for p in descendants(self.proc.pid) if p != self.proc.pid]
        stop(self.proc)
        for p in kids:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while kids and time.monotonic() < deadline:
            kids = [p for p in kids if os.path.exists("/proc/%d" % p) and not zombie(p)]
            time.sleep(0.05)
        for p in kids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def pid(self):
        return self.proc.pid

    def upfx(self, prefix):
        return POPA3D_PFX + prefix

    def forget_index(self, user):
        pass            # no index: popa3d parses the whole mbox at every login


def pids_of_uid(uid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/status" % d) as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                out.append(int(d))
                            break
            except OSError:
                pass
    return out


def zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def maildir_to_mbox(maildir, spool, uid, gid):
    """The Maildir's messages (cur/ and new/, in delivery order) as an mbox
    spool: a From_ line per message, ">From " quoting in the mboxrd way
    (">*From " gains one ">"; popa3d does not un-quote, so a quoted line would
    be served one octet longer; the corpus has none), a blank line after each
    message. Returns (bytes written, quoted lines)."""
    files = []
    for sub in ("cur", "new"):
        d = os.path.join(maildir, sub)
        for f in os.listdir(d):
            m = re.match(r"(\d+)\.M(\d+)", f)
            files.append(((int(m.group(1)), int(m.group(2))) if m else (0, 0), f, os.path.join(d, f)))
    files.sort()
    quote = re.compile(rb"^(>*From )", re.M)
    total = quoted = 0
    fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            for (t, _), _, path in files:
                with open(path, "rb") as f:
                    data = f.read()
                data, n = quote.subn(rb">\1", data)
                quoted += n
                if not data.endswith(b"\n"):
                    data += b"\n"
                sender = re.search(rb"^Return-Path: <([^>\n]*)>", data, re.M)
                frm = b"From %s %s\n" % (sender.group(1) if sender else b"MAILER-DAEMON",
                                         time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(t)).encode())
                out.write(frm)
                out.write(data)
                out.write(b"\n")
                total += len(frm) + len(data) + 1
        os.chown(spool, uid, gid)
    except BaseException:
        os.unlink(spool)
        raise
    return total, quoted


def own(path):
    if AS_ROOT:
        pw = pwd.getpwnam("nobody")
        run(["chown", "-R", "%d:%d" % (pw.pw_uid, pw.pw_gid), path])


# ------------------------------------------------------------------ setup

def ensure_packages(prof):
    want = []
    if prof["dovecot"] and not shutil.which("dovecot"):
        want.append("dovecot-pop3d")
    if prof["clients"]:
        if not shutil.which("mpop"):
            want.append("mpop")
        if not shutil.which("fetchmail"):
            want.append("fetchmail")
    if prof is not PROFILES["smoke"] and not shutil.which("gnuplot"):
        want.append("gnuplot-nox")
    if not want:
        return
    if not AS_ROOT:
        log("missing %s; run: sudo apt-get install -y %s" % (", ".join(want), " ".join(want)))
        return
    log("installing " + " ".join(want))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends"] + want, env=env,
                   stdout=subprocess.DEVNULL)
    if "dovecot-pop3d" in want:
        # the package starts the system Dovecot on port 110; we run our own
        subprocess.run(["systemctl", "stop", "dovecot"], stderr=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)


def corpus(root, prof):
    mail = os.path.join(root, "corpus")
    os.makedirs(mail)
    def mk(prefix, users, msgs, size, scheme="PLAIN"):
        run([sys.executable, MKCORPUS, "--dir", mail, "--prefix", prefix, "--users", str(users),
             "--msgs", str(msgs), "--size", str(size), "--scheme", scheme])
    t0 = time.monotonic()
    # only what the selected sections use (POPBOX_BENCH_ONLY; all without)
    def used(*sections):
        return any(want(x) for x in sections)
    mk("s", max(prof["sess_users"], max(prof["sweep"] or [1])), 3, 4096)
    if prof["hashed"] and used("sessions"):
        mk("h", prof["sess_users"], 3, 4096, "SHA512-CRYPT")
    mk("r", 8, prof["retr_msgs"], 4096)
    if prof["m1_msgs"] and used("retr", "tls", "peruser"):
        mk("m", 8, prof["m1_msgs"], 1 << 20)
    mk("i", max(prof["idle"]) if used("memory") else 1, 1, 2048)
    if prof["big_msgs"] and used("bigbox", "mbox"):
        mk("b", 1, prof["big_msgs"], 2048)
    if want("mbox"):
        other = [n for n in prof["mbox_msgs"] if mbox_prefix(prof, n) == "x"]
        assert len(other) <= 1, "one mbox size besides big_msgs per profile"
        for n in other:
            mk("x", 1, n, 2048)
    if prof["clients"] and used("fetch"):
        mk("f", 1, prof["fetch_4k"], 4096)
        mk("g", 1, prof["fetch_1m"], 1 << 20)
        if prof.get("fetch_accts"):
            mk("a", 4, prof["fetch_accts"], 4096)
    log("corpus made in %.1fs" % (time.monotonic() - t0))
    users = os.path.join(mail, "users")
    # one copy of the Maildirs per server (hard links: neither server
    # rewrites message files, each writes its own index into its own tree)
    trees = {}
    for srv in ("popboxd", "dovecot", "pristine"):
        dst = os.path.join(root, "mail-" + srv)
        run(["cp", "-al", os.path.join(mail, "mail"), dst])
        trees[srv] = dst
    own(trees["popboxd"])
    own(trees["dovecot"])
    own(trees["pristine"])
    if AS_ROOT:
        own(users)
    return users, trees


def make_cert(root, kind="ECDSA P-256"):
    """A self-signed certificate and key (made once per kind):
    "ECDSA P-256" or "RSA-2048"."""
    tag = "rsa" if kind == "RSA-2048" else "ec"
    cert = os.path.join(root, "cert-%s.pem" % tag)
    key = os.path.join(root, "key-%s.pem" % tag)
    if not os.path.exists(cert):
        new = ["rsa:2048"] if tag == "rsa" else ["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        run(["openssl", "req", "-x509", "-newkey"] + new +
            ["-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.chmod(key, 0o600)
    return cert, key


# ------------------------------------------------------------------ scenarios

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def sweep_point(s, n, dur):
    """One point of the scale curve; a run that does not end in its bound is
    reported as missing (logged), not the end of the whole benchmark."""
    try:
        return pop3load("sessions", s.port, "-c", n, "-d", dur, "-u", s.upfx("s"), "-S", srv=s)
    except subprocess.TimeoutExpired:
        log("scale curve: %s with %d clients did not finish in time: no figure" % (s.name, n))
        return {"rate": None, "p99_ms": None, "cpu_us": None, "errors": 0}


def alternate(servers, reps, fn):
    """{server name: [results]}; order flips each repetition."""
    out = {s.name: [] for s in servers}
    for r in range(reps):
        order = servers if r % 2 == 0 else list(reversed(servers))
        for s in order:
            out[s.name].append(fn(s))
    return out


def main():
    global TMP
    mode = sys.argv[1] if len(sys.argv) > 1 else "quick"
    if mode not in PROFILES:
        log("usage: bench/run.sh smoke|quick|full")
        return 2
    prof = dict(PROFILES[mode])
    # short development runs (results marked by the file name, no history):
    # POPBOX_BENCH_REPS=1 POPBOX_BENCH_DUR=1 POPBOX_BENCH_ONLY=sessions
    for k in ("reps", "dur"):
        v = os.environ.get("POPBOX_BENCH_" + k.upper())
        if v:
            prof[k] = type(prof[k])(v)
            SHORT.append(k + v)
    # POPBOX_BENCH_IDLE=1000,10000: other idle-session levels (memory)
    v = os.environ.get("POPBOX_BENCH_IDLE")
    if v:
        prof["idle"] = [int(x) for x in v.split(",")]
        SHORT.append("idle" + v.replace(",", "+"))
    for p in (POP3LOAD, POPBOXD):
        if not os.access(p, os.X_OK):
            log("%s missing: run make first" % p)
            return 2
    ensure_packages(prof)
    if prof["dovecot"] and not shutil.which("dovecot"):
        log("Dovecot not installed: running popboxd alone")
        prof = dict(prof, dovecot=False, clients=False)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    TMP = tempfile.mkdtemp(prefix="popbox-bench-", dir="/tmp")
    os.chmod(TMP, 0o755)
    t_start = time.monotonic()
    try:
        return bench(mode, prof)
    finally:
        stop_all()
        cleanup_all()
        if not os.environ.get("POPBOX_KEEP_TMP"):
            shutil.rmtree(TMP, ignore_errors=True)
        log("bench %s: %.0fs" % (mode, time.monotonic() - t_start))


def bench(mode, prof):
    reps, dur = prof["reps"], prof["dur"]
    users, trees = corpus(TMP, prof)
    cert, key = make_cert(TMP) if prof["tls"] else (None, None)
    pb = Popboxd(TMP, users, trees["popboxd"], cert, key)
    servers = [pb]
    if prof["dovecot"]:
        # the same users file, readable by Dovecot's auth user
        dusers = os.path.join(TMP, "users-dovecot")
        shutil.copyfile(users, dusers)
        os.chmod(dusers, 0o600)
        if AS_ROOT:
            try:
                pw = pwd.getpwnam("dovecot")
                os.chown(dusers, pw.pw_uid, pw.pw_gid)
            except KeyError:
                os.chmod(dusers, 0o644)
        dc = Dovecot(TMP, dusers, trees["dovecot"], cert, key, max(prof["idle"]))
        servers.append(dc)
    if prof["popa3d"]:
        # system users (and mbox spools) only for the sections that run
        pfx = {}
        if want("sessions"):
            pfx["s"] = max(prof["sess_users"], max(prof["sweep"] or [1]))
            if prof["hashed"]:
                pfx["h"] = prof["sess_users"]
        if want("retr"):
            pfx["r"] = 8
            if prof["m1_msgs"]:
                pfx["m"] = 8
        if want("bigbox") and prof["big_msgs"]:
            pfx["b"] = 1
        if want("memory"):
            pfx["i"] = POPA3D_IDLE_USERS
        if want("mbox"):
            pfx["r"] = max(1, pfx.get("r", 0))
            for n in prof["mbox_msgs"]:
                pfx[mbox_prefix(prof, n)] = 1
        try:
            if not pfx:
                raise SkipPopa3d("no section it takes part in")
            servers.append(Popa3d(TMP, trees["pristine"], users, pfx))
        except SkipPopa3d as e:
            log("popa3d skipped: %s" % e)
        except (OSError, subprocess.CalledProcessError) as e:
            log("popa3d skipped: set-up failed: %s" % e)
    for s in servers:
        s.start()
    rows = []           # (scenario, {server: value}, unit, limit, higher_is_better)
    raw = {}
    ok = True

    def record(name, unit, res, key, limit=None, better="high"):
        vals = {s: med([r.get(key) for r in rs]) for s, rs in res.items()}
        rows.append((name, vals, unit, limit, better))
        raw[name] = res
        log("%-34s %s" % (name, "  ".join("%s=%s" % (k, fmt(v)) for k, v in vals.items())))

    def errors_of(res):
        return sum(int(r.get("errors", 0)) + (1 if r.get("exit") else 0) for rs in res.values() for r in rs)

    # ---- machine limits (same harness)
    limits = {}
    sweep = {}
    sweep_p99 = {}
    sweep_cpu = {}
    mem = {}
    mem_tls = {}
    mem_skipped = {}
    if prof["limits"] and want("limits"):
        limits["stream1"] = med([pop3load("stream", 0, "-c", 1, "-d", dur)["mbps"] for _ in range(reps)])
        limits["stream8"] = med([pop3load("stream", 0, "-c", 8, "-d", dur)["mbps"] for _ in range(reps)])
        for tag, size, msgs in (("4k", 4096, prof["retr_msgs"]), ("1m", 1 << 20, max(1, prof["m1_msgs"]))):
            port = free_port()
            ideal = subprocess.Popen([POP3LOAD, "ideal-server", "-p", str(port), "-c", "160",
                                      "-d", str(dur * reps * 6 + 30), "-s", str(size), "-m", str(msgs)],
                                     stderr=subprocess.DEVNULL)
            PROCS.append(ideal)
            time.sleep(0.3)
            try:
                if tag == "4k":
                    limits["ideal_sess64"] = med([pop3load("sessions", port, "-c", 64, "-d", dur, "-S")["rate"] for _ in range(reps)])
                    limits["ideal_4k1"] = med([pop3load("retr", port, "-c", 1, "-d", dur)["rate"] for _ in range(reps)])
                    limits["ideal_4k8"] = med([pop3load("retr", port, "-c", 8, "-d", dur)["rate"] for _ in range(reps)])
                else:
                    limits["ideal_1m1"] = med([pop3load("retr", port, "-c", 1, "-d", dur)["mbps"] for _ in range(reps)])
                    limits["ideal_1m8"] = med([pop3load("retr", port, "-c", 8, "-d", dur)["mbps"] for _ in range(reps)])
            finally:
                stop(ideal)
        log("limits: " + " ".join("%s=%.1f" % kv for kv in limits.items()))

    # ---- session rate
    if want("sessions"):
        c = prof["sess_clients"]
        res = alternate(servers, reps, lambda s: pop3load("sessions", s.port, "-c", c, "-d", dur, "-u", s.upfx("s"), "-S", srv=s))
        ok &= errors_of(res) == 0
        record("sessions/s, PLAIN, %d clients" % c, "sessions/s", res, "rate", limits.get("ideal_sess64"))
        record("session p99 latency, %d clients" % c, "ms", res, "p99_ms", None, "low")
        record("server CPU µs per session, PLAIN, %d clients" % c, "µs", res, "cpu_us", None, "low")
        # the scale curve: sessions/s and p99 latency against concurrency
        # popa3d (a process per connection under socat, PAM and a crypt per
        # login: ~25 ms of CPU a session) is measured up to 64 clients: 1,024
        # of its sessions at once do not finish inside pop3load's bound
        for n in prof["sweep"]:
            at_n = [s for s in servers if s.name != "popa3d" or n <= 64]
            r2 = res if n == c else alternate(at_n, max(1, reps - 1), lambda s: sweep_point(s, n, dur))
            ok &= errors_of(r2) == 0
            sweep[n] = {k: med([r["rate"] for r in v]) for k, v in r2.items()}
            sweep_p99[n] = {k: med([r.get("p99_ms") for r in v]) for k, v in r2.items()}
            sweep_cpu[n] = {k: med([r.get("cpu_us") for r in v]) for k, v in r2.items()}
        if prof["hashed"]:
            res = alternate(servers, reps, lambda s: pop3load("sessions", s.port, "-c", c, "-d", dur, "-u", s.upfx("h"), "-S", srv=s))
            ok &= errors_of(res) == 0
            record("sessions/s, SHA512-CRYPT, %d clients" % c, "sessions/s", res, "rate")

            # the event loop keeps serving while hashes are computed: one
            # logged-in client's RETR latency, alone and while 64 clients
            # log in with SHA512-CRYPT (both CPUs busy hashing)
            def retr_during_hashing(s):
                bg = subprocess.Popen([POP3LOAD, "sessions", "-p", str(s.port), "-c", str(c),
                                       "-d", str(dur + 1.0), "-u", s.upfx("h"), "-S"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                PROCS.append(bg)
                try:
                    time.sleep(0.5)
                    return pop3load("retr", s.port, "-c", 1, "-d", dur, "-u", s.upfx("r"))
                finally:
                    try:
                        bg.wait(dur + 30)
                    except subprocess.TimeoutExpired:
                        stop(bg)
            # (popa3d forks a process per session: nothing to measure there)
            pair = [s for s in servers if s.name != "popa3d"]
            quiet = alternate(pair, reps, lambda s: pop3load("retr", s.port, "-c", 1, "-d", dur, "-u", s.upfx("r")))
            busy = alternate(pair, reps, retr_during_hashing)
            ok &= errors_of(busy) == 0
            record("RETR 4 KiB p99 ms, 1 client, idle server", "ms", quiet, "p99_ms", None, "low")
            record("RETR 4 KiB p99 ms, 1 client, during SHA512 logins", "ms", busy, "p99_ms", None, "low")

    # ---- RETR
    if want("retr"):
        # beside the servers, the floor (FileFloor): what a server that does
        # only the unavoidable work costs per message on this machine
        def floors(prefix, kinds):
            fl = [FileFloor(TMP, trees["pristine"], prefix, loop) for loop in kinds]
            for f in fl:
                f.start()
            return fl
        floor_kinds = (False, True) if prof.get("floor", prof["limits"]) else ()
        fl = floors("r", floor_kinds)
        try:
            for n in (1, 8):
                res = alternate(servers + fl, reps, lambda s: pop3load("retr", s.port, "-c", n, "-d", dur, "-u", s.upfx("r"), srv=s))
                ok &= errors_of(res) == 0
                record("RETR 4 KiB msgs/s, %d client%s" % (n, "s" if n > 1 else ""), "msgs/s", res, "rate",
                       limits.get("ideal_4k%d" % n))
                record("server CPU µs per RETR 4 KiB, %d client%s" % (n, "s" if n > 1 else ""), "µs", res, "cpu_us", None, "low")
        finally:
            for f in fl:
                f.stop()
        if prof["m1_msgs"]:
            # the event-loop floor blocks its loop while a reply larger than
            # the socket buffer goes out: only the threaded floor for 1 MiB
            fl = floors("m", floor_kinds[:1])
            try:
                for n in (1, 8):
                    res = alternate(servers + fl, reps, lambda s: pop3load("retr", s.port, "-c", n, "-d", dur, "-u", s.upfx("m"), srv=s))
                    ok &= errors_of(res) == 0
                    record("RETR 1 MiB MB/s, %d client%s" % (n, "s" if n > 1 else ""), "MB/s", res, "mbps",
                           limits.get("stream1" if n == 1 else "ideal_1m8"))
                    record("server CPU µs per RETR 1 MiB, %d client%s" % (n, "s" if n > 1 else ""), "µs", res, "cpu_us", None, "low")
            finally:
                for f in fl:
                    f.stop()

    # ---- TLS: handshakes (full, resumed), STLS, RETR over TLS
    tls_servers = [s for s in servers if s.tls_port]
    if prof["tls"] and want("tls") and tls_servers:
        c = prof["sess_clients"]

        def tls_rate(proto, what, *args, port="tls_port"):
            res = alternate(tls_servers, reps, lambda s: pop3load(
                "tls", getattr(s, port), "-c", c, "-d", dur, "-u", "s", "-S", *args, srv=s))
            ok_ = errors_of(res) == 0
            name = "%s sessions/s (%s), %d clients" % (proto, what, c)
            record(name, "sessions/s", res, "rate")
            record("server CPU µs per %s session (%s)" % (proto, what), "µs", res, "cpu_us", None, "low")
            raw[name + " negotiated"] = {k: [r.get("tls_group"), r.get("tls_cert"), r.get("tls_version")]
                                         for k, v in res.items() for r in v[:1]}
            raw[name + " resumed fraction"] = {k: med([r["resumed"] / max(1, r["ops"]) for r in v])
                                               for k, v in res.items()}
            return ok_

        # the certificate kinds, ECDSA last: the rest of the bench runs with it
        for kind in prof["tls_certs"]:
            ck = make_cert(TMP, kind)
            for s in tls_servers:
                s.stop()
                s.set_cert(*ck)
                s.start()
            for group in prof["tls_groups"]:
                ok &= tls_rate("TLS", "full handshake, %s cert, %s" % (kind, group), "-R", "none", "-G", group)
        ok &= tls_rate("TLS", "resumed", "-R", "ticket")
        ok &= tls_rate("TLS", "resumed, TLS 1.2 session cache", "-R", "cache")
        ok &= tls_rate("STLS", "full handshake, X25519", "-E", "-R", "none", "-G", "X25519", port="port")
        for n in (1, 8):
            res = alternate(tls_servers, reps, lambda s: pop3load("retr", s.tls_port, "-T", "-c", n, "-d", dur,
                                                                  "-u", s.upfx("r"), srv=s))
            ok &= errors_of(res) == 0
            record("TLS RETR 4 KiB msgs/s, %d client%s" % (n, "s" if n > 1 else ""), "msgs/s", res, "rate")
            record("server CPU µs per TLS RETR 4 KiB, %d client%s" % (n, "s" if n > 1 else ""), "µs", res, "cpu_us", None, "low")
        if prof["m1_msgs"]:
            for n in (1, 8):
                res = alternate(tls_servers, reps, lambda s: pop3load("retr", s.tls_port, "-T", "-c", n, "-d", dur,
                                                                      "-u", s.upfx("m"), srv=s))
                ok &= errors_of(res) == 0
                record("TLS RETR 1 MiB MB/s, %d client%s" % (n, "s" if n > 1 else ""), "MB/s", res, "mbps")

    # ---- per-user session processes: the same popboxd with a process per
    # login (fd passed on plain connections, TLS relayed by the worker)
    # against today's workers, on the same Maildirs
    peruser_rows = []
    if want("peruser"):
        pu = PopboxdPerUser(TMP, users, trees["popboxd"], cert, key)
        pu.start()
        # the process-per-session variant: every login forks
        ps = PopboxdPerUser(TMP, users, trees["popboxd"], cert, key, linger="0")
        ps.start()
        pair = [pb, pu]
        c = prof["sess_clients"]
        # the users' processes exist before the measured runs (a user's
        # first login forks: the per-session column shows that cost)
        pop3load("sessions", pu.port, "-c", c, "-d", 1, "-u", "s", "-S", check=False)

        def precord(name, unit, res, key, better="high"):
            vals = {s: med([r.get(key) for r in rs]) for s, rs in res.items()}
            peruser_rows.append((name, vals, unit, None, better))
            raw["per-user: " + name] = res
            log("%-34s %s" % (name, "  ".join("%s=%s" % (k, fmt(v)) for k, v in vals.items())))

        res = alternate([pb, pu, ps], reps, lambda s: pop3load("sessions", s.port, "-c", c, "-d", dur,
                                                              "-u", "s", "-S", srv=s))
        ok &= errors_of(res) == 0
        precord("sessions/s, PLAIN, %d clients" % c, "sessions/s", res, "rate")
        precord("server CPU µs per session, PLAIN", "µs", res, "cpu_us", "low")
        ps.stop()
        res = alternate(pair, reps, lambda s: pop3load("retr", s.port, "-c", 1, "-d", dur, "-u", "r", srv=s))
        ok &= errors_of(res) == 0
        precord("RETR 4 KiB msgs/s, 1 client (plain: socket passed)", "msgs/s", res, "rate")
        if prof["tls"]:
            res = alternate(pair, reps, lambda s: pop3load("tls", s.tls_port, "-c", c, "-d", dur,
                                                           "-u", "s", "-S", "-R", "ticket", srv=s))
            ok &= errors_of(res) == 0
            precord("TLS sessions/s (resumed), %d clients" % c, "sessions/s", res, "rate")
            precord("server CPU µs per TLS session (resumed)", "µs", res, "cpu_us", "low")
            res = alternate(pair, reps, lambda s: pop3load("retr", s.tls_port, "-T", "-c", 1, "-d", dur,
                                                           "-u", "r", srv=s))
            ok &= errors_of(res) == 0
            precord("TLS RETR 4 KiB msgs/s, 1 client (relayed)", "msgs/s", res, "rate")
            precord("server CPU µs per TLS RETR 4 KiB (relayed)", "µs", res, "cpu_us", "low")
            if prof["m1_msgs"]:
                res = alternate(pair, reps, lambda s: pop3load("retr", s.tls_port, "-T", "-c", 1, "-d", dur,
                                                               "-u", "m", srv=s))
                ok &= errors_of(res) == 0
                precord("TLS RETR 1 MiB MB/s, 1 client (relayed)", "MB/s", res, "mbps")
                precord("server CPU µs per TLS RETR 1 MiB (relayed)", "µs", res, "cpu_us", "low")
        pu.stop()

    # ---- big maildrop
    if want("bigbox"):
        if prof["big_msgs"]:
            def big(s, which):
                if which == "cold":
                    s.forget_index("b0")
                return pop3load("bigbox", s.port, "-u", s.upfx("b"), "-U", 1)
            cold = {s.name: [] for s in servers}
            warm = {s.name: [] for s in servers}
            for r in range(reps):
                for s in (servers if r % 2 == 0 else list(reversed(servers))):
                    cold[s.name].append(big(s, "cold"))
                    warm[s.name].append(big(s, "warm"))
            ok &= errors_of(cold) == 0 and errors_of(warm) == 0
            nb = prof["big_msgs"]
            record("big maildrop %d: 1st login..LIST ms" % nb, "ms", cold, "total_ms", None, "low")
            record("big maildrop %d: 2nd login..LIST ms" % nb, "ms", warm, "total_ms", None, "low")
            record("big maildrop %d: 2nd PASS ms" % nb, "ms", warm, "pass_ms", None, "low")

    # ---- mbox spools (issue 13): login..LIST first (no index) and warm
    # (index present), RETR of 4 KiB messages; popboxd (mail = mbox:),
    # Dovecot on mbox and popa3d on copies of the same spools
    mbox_targets = []
    if want("mbox"):
        mbox_targets, good = mbox_section(prof, users, trees, servers, record, errors_of)
        ok &= good

    # ---- memory per idle authenticated session
    if want("memory"):
        # fresh servers for each level: the marginal cost of a session, not
        # allocator high-water marks or idle processes left by earlier runs
        for k in prof["idle"]:
            for s in servers:
                # a level that would not fit in the machine's memory (from
                # the server's figure at the level before) is reported as
                # the limit instead of run (Dovecot: 600 KiB a session)
                prev = mem.get(s.name, {})
                if prev:
                    per = prev[max(prev)]["per"] or 0
                    if per * k > 0.6 * mem_available_kib():
                        log("idle %s %d sessions: skipped, about %.0f MiB at %.0f KiB each, "
                            "more than 60%% of the %.0f MiB available" % (
                                s.name, k, per * k / 1024, per, mem_available_kib() / 1024))
                        mem_skipped.setdefault(s.name, []).append(k)
                        continue
                # popa3d runs a process per session (socat's child, then
                # popa3d's own): more sessions than process ids is no run
                if s.name == "popa3d" and 2 * k > pid_max():
                    log("idle popa3d %d sessions: skipped, a process per session and "
                        "kernel.pid_max = %d" % (k, pid_max()))
                    mem_skipped.setdefault(s.name, []).append(k)
                    continue
                nu = POPA3D_IDLE_USERS if s.name == "popa3d" else max(prof["idle"])
                mem.setdefault(s.name, {})[k], good = idle_memory(s, k, nu)
                ok &= good
        # idle TLS sessions (implicit TLS, full handshake each) at the
        # smallest and the largest level
        if prof["tls"]:
            for k in sorted({min(prof["idle"]), max(prof["idle"])}):
                for s in tls_servers:
                    if k in mem_skipped.get(s.name, []):
                        continue
                    mem_tls.setdefault(s.name, {})[k], good = idle_memory(s, k, max(prof["idle"]), tls=True)
                    ok &= good
        for k in prof["idle"]:
            rows.append(("KiB PSS per idle session at %d" % k,
                         {s.name: mem[s.name][k]["per"] for s in servers if k in mem.get(s.name, {})},
                         "KiB", None, "low"))
        if mem_tls:
            # a server skipped at a level (memory) has no figure there
            for k in sorted({k for v in mem_tls.values() for k in v}):
                rows.append(("KiB PSS per idle TLS session at %d" % k,
                             {n: v[k]["per"] for n, v in mem_tls.items() if k in v},
                             "KiB", None, "low"))

    # ---- fetch clients
    fetch = {}
    if prof["clients"] and want("fetch"):
        fetch = fetch_bench(dc, trees, reps, prof)

    elapsed = time.monotonic() - t_start_global
    table = render(rows, servers)
    if peruser_rows:
        table += "\n\nPer-user session processes (session_process = per-user against the workers):\n\n"
        table += render(peruser_rows, [pb, pu, ps]).split("\n(")[0]
    if sweep:
        table += "\n\n" + render_sweep(sweep, sweep_p99, [s.name for s in servers])
    if mbox_targets:
        table += "\n\nmbox targets (issue 13):\n\n" + render_targets(mbox_targets)
    print(table)
    if fetch:
        print(render_fetch(fetch))
    result = dict(mode=mode, date=time.strftime("%Y-%m-%d %H:%M:%S %z"), commit=commit(),
                  machine=machine(), limits=limits, rows=[list(r) for r in rows], sweep=sweep,
                  sweep_p99=sweep_p99, sweep_cpu=sweep_cpu,
                  memory=mem, memory_tls=mem_tls, memory_skipped=mem_skipped, fetch=fetch, raw=raw, seconds=elapsed, ok=ok,
                  mbox_targets=mbox_targets)
    if mode != "smoke":
        outdir = os.path.join(REPO, "bench", "results")
        os.makedirs(outdir, exist_ok=True)
        # a run of some sections only goes to MODE-SECTIONS.{md,json}
        name = "-".join([mode] + sorted(ONLY) + SHORT)
        with open(os.path.join(outdir, "%s.json" % name), "w") as f:
            json.dump(result, f, indent=1, default=str)
        with open(os.path.join(outdir, "%s.md" % name), "w") as f:
            f.write("%s, commit %s, %s\n\n" % (result["date"], result["commit"], result["machine"]))
            f.write(table + "\n")
            if fetch:
                f.write("\n" + render_fetch(fetch) + "\n")
        if not ONLY and not SHORT:
            chart(result, outdir, mode)
            append_history(result, outdir)
            write_trend(outdir)
    if mode == "smoke":
        # the harness works: pop3load ran every smoke scenario without errors
        return 0 if ok else 1
    return 0 if ok else 1


def copy_spool(src, dst):
    """dst as a copy of the spool src (contents and mtime), owned as the
    bench's other mail (nobody as root), mode 0600."""
    shutil.copy2(src, dst)
    os.chmod(dst, 0o600)
    own(dst)


def reaped(s, timeout=2.0):
    """Until the server's per-session processes (popa3d under socat) have
    ended, so that their CPU time is in the tree's figure (a child's CPU
    shows in its parent's cutime once reaped)."""
    if s.name != "popa3d":
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p == s.pid() for p in descendants(s.pid())):
            return
        time.sleep(0.01)


def mbox_section(prof, users, trees, servers, record, errors_of):
    """popboxd with mail = mbox:, Dovecot on mbox and popa3d (already
    running, its spools in /var/mail) on copies of the same mbox spools,
    made from the corpus's Maildirs by maildir_to_mbox: for each size in
    prof["mbox_msgs"] login..LIST (USER, PASS, STAT, UIDL, LIST) first
    (popboxd's and Dovecot's index removed, the spool as made) and warm
    (right after, index present: the median of mbox_warm logins in a row),
    with the server CPU per login; RETR of
    4 KiB messages with one client (msgs/s, server CPU per message).
    Servers alternate, medians. Returns (targets, ok)."""
    reps, dur = prof["reps"], prof["dur"]
    root = os.path.join(TMP, "mbox")
    pristine = os.path.join(root, "pristine")
    os.makedirs(pristine)
    sizes = {n: mbox_prefix(prof, n) for n in prof["mbox_msgs"]}
    names = ["r0"] + [p + "0" for p in sizes.values()]
    t0 = time.monotonic()
    uid, gid = (pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid) if AS_ROOT \
        else (os.geteuid(), os.getegid())
    nbytes = {}
    for u in names:
        nbytes[u], _ = maildir_to_mbox(os.path.join(trees["pristine"], u), os.path.join(pristine, u),
                                       uid, gid)
    spools = {}
    for kind in ("popboxd", "dovecot"):
        spools[kind] = d = os.path.join(root, "spool-" + kind)
        os.makedirs(d)
        own(d)
        for u in names:
            copy_spool(os.path.join(pristine, u), os.path.join(d, u))
    p3 = [s for s in servers if s.name == "popa3d"]
    for u in names if p3 else ():
        # popa3d's spools were made from the same Maildirs by the same
        # function: the same bytes
        with open(os.path.join(pristine, u), "rb") as a, open("/var/mail/" + p3[0].upfx(u), "rb") as b:
            while True:
                x, y = a.read(1 << 20), b.read(1 << 20)
                if x != y:
                    raise RuntimeError("popa3d's spool %s differs from the others'" % p3[0].upfx(u))
                if not x:
                    break
    log("mbox spools %s (%s MB) and 2 copies in %.1fs" % (
        ", ".join(names), "+".join("%.1f" % (nbytes[u] / 1e6) for u in names), time.monotonic() - t0))
    mservers = [PopboxdMbox(root, users, spools["popboxd"])]
    if prof["dovecot"]:
        dusers = os.path.join(TMP, "users-dovecot")
        mservers.append(DovecotMbox(root, dusers, spools["dovecot"], 100))
    mservers += p3
    started = []
    try:
        for s in mservers:
            if s.name != "popa3d":
                s.start()
                started.append(s)
        return mbox_measure(prof, mservers, pristine, sizes, record, errors_of)
    finally:
        for s in started:
            s.stop()


def mbox_measure(prof, servers, pristine, sizes, record, errors_of):
    reps, dur = prof["reps"], prof["dur"]
    ok = True

    def restore(s, u):
        # the spool as made: Dovecot may write its headers into it
        if s.name == "popa3d":
            return
        path, src = os.path.join(s.spools, u), os.path.join(pristine, u)
        a, b = os.stat(path), os.stat(src)
        if (a.st_size, a.st_mtime_ns) != (b.st_size, b.st_mtime_ns):
            log("mbox: %s changed %s; restored" % (s.name, u))
            copy_spool(src, path)

    def login(s, u, first):
        if first:
            restore(s, u)
            s.forget_index(u)
        c0 = tree_cpu(s.pid())
        r = pop3load("bigbox", s.port, "-u", s.upfx(u[:-1]), "-U", 1)
        reaped(s)
        r["cpu_ms"] = (tree_cpu(s.pid()) - c0) * 1e3
        return r

    def warm_logins(s, u, k):
        """k warm logins in a row: the median time, and the CPU over all k
        divided by k (the process tree's CPU is counted in clock ticks of
        10 ms: one login of a few ms would read as 0 or 10)."""
        c0 = tree_cpu(s.pid())
        rs = [pop3load("bigbox", s.port, "-u", s.upfx(u[:-1]), "-U", 1) for _ in range(k)]
        reaped(s)
        return dict(total_ms=med([r.get("total_ms") for r in rs]),
                    pass_ms=med([r.get("pass_ms") for r in rs]),
                    cpu_ms=(tree_cpu(s.pid()) - c0) * 1e3 / k,
                    errors=sum(int(r.get("errors", 0)) for r in rs),
                    exit=max(r.get("exit", 0) for r in rs))

    targets = []
    for n, prefix in sizes.items():
        u = prefix + "0"
        first = {s.name: [] for s in servers}
        warm = {s.name: [] for s in servers}
        for r in range(reps):
            for s in (servers if r % 2 == 0 else list(reversed(servers))):
                first[s.name].append(login(s, u, True))
                warm[s.name].append(warm_logins(s, u, prof.get("mbox_warm", 5)))
        ok &= errors_of(first) == 0 and errors_of(warm) == 0
        record("mbox %d: 1st login..LIST ms" % n, "ms", first, "total_ms", None, "low")
        record("mbox %d: warm login..LIST ms" % n, "ms", warm, "total_ms", None, "low")
        record("mbox %d: server CPU ms per 1st login" % n, "ms", first, "cpu_ms", None, "low")
        record("mbox %d: server CPU ms per warm login" % n, "ms", warm, "cpu_ms", None, "low")
        w = {k: med([x.get("total_ms") for x in v]) for k, v in warm.items()}
        if w.get("popboxd") and w.get("popa3d"):
            f = w["popboxd"] / w["popa3d"]
            targets.append(("mbox %d: warm login..LIST ≤ 1/3 of popa3d's" % n,
                            "%.1f vs %.1f ms = %.2f" % (w["popboxd"], w["popa3d"], f),
                            "met" if f <= 1 / 3 else "**not met**"))
    res = alternate(servers, reps, lambda s: pop3load("retr", s.port, "-c", 1, "-d", dur,
                                                      "-u", s.upfx("r"), "-U", 1, srv=s))
    ok &= errors_of(res) == 0
    record("mbox RETR 4 KiB msgs/s, 1 client", "msgs/s", res, "rate")
    record("mbox server CPU µs per RETR 4 KiB, 1 client", "µs", res, "cpu_us", None, "low")
    rate = {k: med([x.get("rate") for x in v]) for k, v in res.items()}
    if rate.get("popboxd") and rate.get("popa3d"):
        f = rate["popboxd"] / rate["popa3d"]
        targets.append(("mbox RETR 4 KiB, 1 client ≥ popa3d's", "%.0f vs %.0f msgs/s = %.2f×" % (
            rate["popboxd"], rate["popa3d"], f), "met" if f >= 1 else "**not met**"))
    for t in targets:
        log("target %s: %s, %s" % t)
    return targets, ok


def render_targets(targets):
    lines = ["| target | measured | status |", "|---|---|---|"]
    lines += ["| %s | %s | %s |" % t for t in targets]
    return "\n".join(lines)


IDLE_CHUNK = 15000   # idle sessions per load generator (open-file limit 20,000 here)


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def pid_max():
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 32768


def idle_memory(s, k, nu, tls=False):
    """Restarts server s (fresh: the marginal cost of a session, not
    allocator high-water marks or idle processes left by earlier runs),
    warms it up (the first sessions fault in code and allocator arenas), takes
    the baseline PSS, opens k authenticated idle sessions (over implicit TLS
    with tls) and measures again. Returns ({base, held, sessions, per}, ok)."""
    s.stop()
    if s.name == "popboxd":
        s.fit_sessions(k)
    s.start()
    port = s.tls_port if tls else s.port
    tflag = ["-T"] if tls else []
    subprocess.run([POP3LOAD, "idle", "-p", str(port), "-k", str(min(50, k)), "-c", "4",
                    "-u", s.upfx("i"), "-U", str(nu), "-S", "-d", "0.5"] + tflag,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    time.sleep(1.0)
    base = pss_kib(s.pid())
    what = "%s-%d%s" % (s.name, k, "-tls" if tls else "")
    # one load generator per IDLE_CHUNK sessions: each holds a descriptor
    # per session under this machine's open-file limit (users offset so
    # that no two hold the same maildrop)
    procs = []
    for off in range(0, k, IDLE_CHUNK):
        kk = min(IDLE_CHUNK, k - off)
        ready = os.path.join(TMP, "ready-%s-%d" % (what, off))
        p = subprocess.Popen([POP3LOAD, "idle", "-p", str(port), "-k", str(kk), "-c", "8",
                              "-u", s.upfx("i"), "-U", str(min(kk, nu)), "-o", str(off if nu >= k else 0),
                              "-S", "-r", ready, "-d", str(max(60, k / 50))] + tflag,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        PROCS.append(p)
        procs.append((p, ready))
    deadline = time.monotonic() + max(60, k / 50) + 10
    while (not all(os.path.exists(rd) for _, rd in procs) and all(p.poll() is None for p, _ in procs)
           and time.monotonic() < deadline):
        time.sleep(0.1)
    time.sleep(1.0)
    held = pss_kib(s.pid())
    n, good, out, err = 0, True, "", ""
    for p, _ in procs:
        p.send_signal(signal.SIGUSR1)
    for p, _ in procs:
        o, e = p.communicate(timeout=300)
        out += o
        err += e
        r = dict(kv.split("=", 1) for kv in o.split()[2:]) if o.startswith("RESULT") else {}
        n += int(r.get("sessions", 0))
        good &= p.returncode == 0
    per = (held - base) / n if n else None
    good = good and n == k
    if not good:
        log("idle %s: %s %s" % (what, out.strip(), err.strip()[-300:]))
    log("idle %-8s %6d sessions%s: PSS %d -> %d KiB, %.1f KiB/session"
        % (s.name, k, " (TLS)" if tls else "", base, held, per or 0))
    time.sleep(1.0)
    return dict(base=base, held=held, sessions=n, per=per), good


def append_history(result, outdir):
    """One line per scenario and run in bench/results/history.csv (date,
    commit, mode, scenario, unit, each server's figure, popboxd's ratio over
    Dovecot with >1 = popboxd better), so a regression shows as a falling
    ratio between commits. Appended, never rewritten."""
    path = os.path.join(outdir, "history.csv")
    fields = ["date", "commit", "mode", "scenario", "unit", "popboxd", "Dovecot", "popa3d", "ratio"]
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(fields)
        for name, vals, unit, limit, better in result["rows"]:
            p, d = vals.get("popboxd"), vals.get("Dovecot")
            ratio = ((p / d) if better == "high" else (d / p)) if (p and d) else None
            w.writerow([result["date"], result["commit"], result["mode"], name, unit] +
                       [fmt(vals.get(n)) for n in ("popboxd", "Dovecot", "popa3d")] +
                       ["%.3f" % ratio if ratio else "-"])


HEADLINES = ("sessions/s, PLAIN, 64 clients", "server CPU µs per session, PLAIN, 64 clients",
             "TLS sessions/s (resumed), 64 clients",
             "RETR 4 KiB msgs/s, 8 clients", "RETR 1 MiB MB/s, 1 client",
             "big maildrop 20000: 2nd login..LIST ms", "KiB PSS per idle session at 2000")


def write_trend(outdir):
    """bench/results/trend.md: the headline ratios over Dovecot (>1 =
    popboxd better) of every recorded run, oldest first, from history.csv."""
    with open(os.path.join(outdir, "history.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    runs = []
    for r in rows:
        key = (r["date"], r["commit"], r["mode"])
        if key not in runs:
            runs.append(key)
    ratio = {(r["date"], r["commit"], r["mode"], r["scenario"]): r["ratio"] for r in rows}
    lines = ["| run (date, commit, mode) | " + " | ".join(HEADLINES) + " |",
             "|---" * (len(HEADLINES) + 1) + "|"]
    for run in runs:
        lines.append("| %s %s %s | " % run + " | ".join(
            (ratio.get(run + (h,)) or "-") for h in HEADLINES) + " |")
    with open(os.path.join(outdir, "trend.md"), "w") as f:
        f.write("Headline ratios, popboxd over Dovecot (>1 = popboxd better), "
                "one line per `make bench`/`make bench-full` run (bench/results/history.csv).\n\n")
        f.write("\n".join(lines) + "\n")


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) < 100:
        return "%.2f" % v
    return "%.0f" % v


def render(rows, servers):
    """scenario | each server | ratio (popboxd vs Dovecot) | vs popa3d
    (popboxd vs popa3d, when popa3d ran) | popboxd / limit."""
    names = [s.name for s in servers]
    # columns measured in some rows only (the RETR floors)
    for row in rows:
        names += [n for n in row[1] if n not in names]
    peers = [n for n in ("Dovecot", "popa3d") if n in names]
    heads = {"Dovecot": "ratio", "popa3d": "vs popa3d"}
    hdr = "| scenario | " + " | ".join(names) + " | " + "".join(heads[n] + " | " for n in peers) + "popboxd / limit |"
    sep = "|---" * (len(names) + len(peers) + 2) + "|"
    lines = [hdr, sep]
    for name, vals, unit, limit, better in rows:
        p = vals.get("popboxd")
        cells = [fmt(vals.get(n)) for n in names]
        ratios = ""
        for n in peers:
            d = vals.get(n)
            ratios += " | " + (("%.2f×" % ((p / d) if better == "high" else (d / p))) if (p and d) else "-")
        frac = "%.0f%% of %s" % (100 * p / limit, fmt(limit)) if (p and limit) else "-"
        lines.append("| %s (%s) | %s%s | %s |" % (name, unit, " | ".join(cells), ratios, frac))
    note = "(ratio: popboxd's advantage over Dovecot, >1 = popboxd better"
    if "popa3d" in names:
        note += "; vs popa3d: the same against popa3d (process per session under socat, PAM, mbox spool)"
    return "\n".join(lines) + "\n" + note + ")"


def render_sweep(sweep, p99, names):
    """The scale curve: sessions/s and p99 latency (ms) per concurrency."""
    lines = ["| clients | " + " | ".join("%s sessions/s" % n for n in names) + " | " +
             " | ".join("%s p99 ms" % n for n in names) + " |",
             "|---" * (2 * len(names) + 1) + "|"]
    for n in sorted(sweep):
        lines.append("| %d | %s | %s |" % (n, " | ".join(fmt(sweep[n].get(k)) for k in names),
                                           " | ".join(fmt(p99.get(n, {}).get(k)) for k in names)))
    return "\n".join(lines)


def render_fetch(fetch):
    lines = ["| client benchmark (from Dovecot, delete mode, into Maildir) | " +
             " | ".join(fetch["tools"]) + " |", "|---" * (len(fetch["tools"]) + 1) + "|"]
    for case in fetch["cases"]:
        lines.append("| %s (msgs/s) | %s |" % (case, " | ".join(fmt(fetch["rate"][case].get(t)) for t in fetch["tools"])))
    return "\n".join(lines)


def commit():
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "?"


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for l in f:
                if l.startswith("model name"):
                    cpu = l.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores, %s %s" % (cpu, os.cpu_count(), platform.system(), platform.release())


# ------------------------------------------------------------------ fetch clients

def fetch_bench(dc, trees, reps, prof):
    """popbox fetch, mpop, fetchmail: the same mailbox from the same Dovecot,
    delete mode, into a Maildir; the server's Maildir is restored (hard links
    from the pristine copy) before every run."""
    tools = ["popbox fetch"]
    if shutil.which("mpop"):
        tools.append("mpop")
    if shutil.which("fetchmail"):
        tools.append("fetchmail")
    cases = {"%d × 4 KiB" % prof["fetch_4k"]: ("f0", prof["fetch_4k"]),
             "%d × 1 MiB" % prof["fetch_1m"]: ("g0", prof["fetch_1m"])}
    rate = {c: {} for c in cases}
    pwfile = os.path.join(TMP, "fetch-password")
    with open(pwfile, "w") as f:
        f.write("secret\n")
    os.chmod(pwfile, 0o600)
    ndst = 0
    for case, (user, n) in cases.items():
        times = {t: [] for t in tools}
        for r in range(reps):
            order = tools if r % 2 == 0 else list(reversed(tools))
            for t in order:
                srv = os.path.join(trees["dovecot"], user)
                shutil.rmtree(srv, ignore_errors=True)
                run(["cp", "-al", os.path.join(trees["pristine"], user), srv])
                own(srv)
                # a fresh destination each run, all removed at the end: an
                # rm -rf just before a run made ext4 (no journal) skip every
                # recently freed inode on each file creation, 0.3-0.5 s per
                # run for every tool alike (perf: recently_deleted())
                ndst += 1
                dst = os.path.join(TMP, "fetched-%d" % ndst)
                for sub in ("cur", "new", "tmp"):
                    os.makedirs(os.path.join(dst, sub))
                t0 = time.monotonic()
                rc = fetch_one(t, dc.port, user, dst, pwfile)
                el = time.monotonic() - t0
                got = len(os.listdir(os.path.join(dst, "new"))) + len(os.listdir(os.path.join(dst, "cur")))
                left = len(os.listdir(os.path.join(srv, "cur"))) + len(os.listdir(os.path.join(srv, "new")))
                if rc != 0 or got != n or left != 0:
                    log("fetch %s %s: exit %s, %d of %d delivered, %d left on the server" % (t, case, rc, got, n, left))
                    continue
                times[t].append(el)
        for t in tools:
            m = med(times[t])
            rate[case][t] = n / m if m else None
        log("fetch %s: %s" % (case, "  ".join("%s=%s" % (t, fmt(rate[case][t])) for t in tools)))
    if prof.get("fetch_accts"):
        # four accounts in one run: popbox fetch four at once (jobs = 4)
        # and one after another (--jobs 1), mpop and fetchmail (both one
        # after another); the rate is all messages over the run's time
        n = prof["fetch_accts"]
        case = "4 accounts × %d × 4 KiB" % n
        users = ["a%d" % i for i in range(4)]
        multi = ["popbox fetch", "popbox fetch --jobs 1"] + tools[1:]
        rate[case] = {}
        times = {t: [] for t in multi}
        for r in range(reps):
            for t in (multi if r % 2 == 0 else list(reversed(multi))):
                for u in users:
                    srv = os.path.join(trees["dovecot"], u)
                    shutil.rmtree(srv, ignore_errors=True)
                    run(["cp", "-al", os.path.join(trees["pristine"], u), srv])
                    own(srv)
                ndst += 1
                dst = os.path.join(TMP, "fetched-%d" % ndst)
                for sub in ("cur", "new", "tmp"):
                    os.makedirs(os.path.join(dst, sub))
                t0 = time.monotonic()
                rc = fetch_many(t, dc.port, users, dst, pwfile)
                el = time.monotonic() - t0
                got = len(os.listdir(os.path.join(dst, "new"))) + len(os.listdir(os.path.join(dst, "cur")))
                if rc != 0 or got != 4 * n:
                    log("fetch %s %s: exit %s, %d of %d delivered" % (t, case, rc, got, 4 * n))
                    continue
                times[t].append(el)
        for t in multi:
            m = med(times[t])
            rate[case][t] = 4 * n / m if m else None
        log("fetch %s: %s" % (case, "  ".join("%s=%s" % (t, fmt(rate[case][t])) for t in multi)))
        tools = tools + ["popbox fetch --jobs 1"]
        cases[case] = None
    return dict(tools=tools, cases=list(cases), rate=rate)


def fetch_many(tool, port, users, dst, pwfile):
    """Fetch the accounts users (password in pwfile) in one run of tool."""
    if tool.startswith("popbox fetch"):
        conf = os.path.join(TMP, "accounts.conf")
        with open(conf, "w") as f:
            for u in users:
                f.write("[account %s]\nhost = 127.0.0.1\nport = %d\ntls = off\n"
                        "allow_plaintext = yes\nuser = %s\npassword_command = cat %s\n"
                        "deliver = maildir:%s\n" % (u, port, u, pwfile, dst))
        jobs = "1" if tool.endswith("--jobs 1") else "4"
        env = dict(os.environ, XDG_STATE_HOME=os.path.join(TMP, "xdg-state"),
                   XDG_CONFIG_HOME=os.path.join(TMP, "xdg-config"), HOME=TMP)
        return subprocess.run([POPBOX, "fetch", "--config", conf, "-q", "--jobs", jobs], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=900).returncode
    if tool == "mpop":
        conf = os.path.join(TMP, "mpoprc-many")
        with open(conf, "w") as f:
            for u in users:
                f.write("account %s\nhost 127.0.0.1\nport %d\ntls off\nauth user\nuser %s\n"
                        "passwordeval cat %s\nkeep off\ndelivery maildir %s\nuidls_file %s\n\n"
                        % (u, port, u, pwfile, dst, os.path.join(TMP, "mpop-uidls-" + u)))
        os.chmod(conf, 0o600)
        return subprocess.run(["mpop", "-C", conf, "-q"] + users, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=900).returncode
    if tool == "fetchmail":
        rc = os.path.join(TMP, "fetchmailrc-many")
        mda = "/bin/sh -c 'f=$(date +%%s%%N).$$; cat > %s/tmp/$f && mv %s/tmp/$f %s/new/$f'" % (dst, dst, dst)
        with open(rc, "w") as f:
            f.write('poll 127.0.0.1 service %d protocol pop3\n' % port)
            for u in users:
                f.write('  user "%s" password "secret" nokeep fetchall mda "%s" sslproto ""\n'
                        % (u, mda))
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=TMP)
        r = subprocess.run(["fetchmail", "-f", rc, "-s", "--nosyslog", "-i", os.path.join(TMP, "fetchids-many"),
                            "--pidfile", os.path.join(TMP, "fetchmail.pid")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
        return 0 if r.returncode in (0, 1) else r.returncode
    raise ValueError(tool)


def fetch_one(tool, port, user, dst, pwfile):
    if tool == "popbox fetch":
        cmd = [POPBOX, "fetch", "--config", "/dev/null", "-q", "--host", "127.0.0.1", "--port", str(port),
               "--tls", "off", "--allow-plaintext=yes", "--user", user, "--password-command",
               "cat " + pwfile, "--deliver", "maildir:" + dst, "--keep=no"]
        env = dict(os.environ, XDG_STATE_HOME=os.path.join(TMP, "xdg-state"),
                   XDG_CONFIG_HOME=os.path.join(TMP, "xdg-config"), HOME=TMP)
        return subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=600).returncode
    if tool == "mpop":
        conf = os.path.join(TMP, "mpoprc")
        with open(conf, "w") as f:
            f.write("account bench\nhost 127.0.0.1\nport %d\ntls off\nauth user\nuser %s\n"
                    "passwordeval cat %s\nkeep off\ndelivery maildir %s\nuidls_file %s\n"
                    % (port, user, pwfile, dst, os.path.join(TMP, "mpop-uidls")))
        os.chmod(conf, 0o600)
        return subprocess.run(["mpop", "-C", conf, "-q", "bench"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=600).returncode
    if tool == "fetchmail":
        # fetchmail has no Maildir writer: the usual setup is an MDA per message
        rc = os.path.join(TMP, "fetchmailrc")
        mda = "/bin/sh -c 'f=$(date +%%s%%N).$$; cat > %s/tmp/$f && mv %s/tmp/$f %s/new/$f'" % (dst, dst, dst)
        with open(rc, "w") as f:
            f.write('poll 127.0.0.1 service %d protocol pop3 user "%s" password "secret" '
                    'nokeep fetchall mda "%s" sslproto ""\n' % (port, user, mda))
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=TMP)
        r = subprocess.run(["fetchmail", "-f", rc, "-s", "--nosyslog", "-i", os.path.join(TMP, "fetchids"),
                            "--pidfile", os.path.join(TMP, "fetchmail.pid")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        return 0 if r.returncode in (0, 1) else r.returncode
    raise ValueError(tool)


# ------------------------------------------------------------------ chart

def chart(result, outdir, mode):
    if not shutil.which("gnuplot"):
        log("gnuplot not installed: no chart")
        return
    sweep = result["sweep"]
    p99 = result.get("sweep_p99") or {}
    mem = result["memory"]
    dat1 = os.path.join(TMP, "sweep.dat")
    dat3 = os.path.join(TMP, "p99.dat")
    dat2 = os.path.join(TMP, "mem.dat")
    names = ["popboxd", "Dovecot"]
    if any("popa3d" in v for v in sweep.values()) or "popa3d" in mem:
        names.append("popa3d")
    with open(dat1, "w") as f:
        for n in sorted(sweep):
            f.write("%d %s\n" % (n, " ".join(str(sweep[n].get(s) or "NaN") for s in names)))
    with open(dat3, "w") as f:
        for n in sorted(p99):
            f.write("%d %s\n" % (n, " ".join(str(p99[n].get(s) or "NaN") for s in names)))
    levels = sorted({k for v in mem.values() for k in v})
    with open(dat2, "w") as f:
        for k in levels:
            f.write("%d %s\n" % (k, " ".join(str((mem.get(s, {}).get(k, {}).get("held", 0) -
                                                 mem.get(s, {}).get(k, {}).get("base", 0)) / 1024.0
                                             if k in mem.get(s, {}) else "NaN") for s in names)))
    png = os.path.join(outdir, "chart-%s.png" % mode)
    gp = """set terminal png size 1500,450
set output '{png}'
set multiplot layout 1,3 title '{title} ({date}, {commit})'
set title 'sessions/s against concurrency (PLAIN)'
set xlabel 'clients'; set ylabel 'sessions/s'; set logscale x 2; set key top left; set grid
plot {p1}
set title 'session p99 latency against concurrency'
set ylabel 'p99 ms'; set logscale y
plot {p3}
unset logscale y
unset logscale x
set title 'server memory (PSS over all processes) against idle sessions'
set xlabel 'authenticated idle sessions'; set ylabel 'MiB PSS above idle server'
set logscale x; set logscale y
plot {p2}
unset multiplot
""".format(png=png, date=result["date"][:10], commit=result["commit"], title=" vs ".join(names),
           p1=", ".join("'%s' using 1:%d with linespoints title '%s'" % (dat1, i + 2, n) for i, n in enumerate(names)),
           p2=", ".join("'%s' using 1:%d with linespoints title '%s'" % (dat2, i + 2, n) for i, n in enumerate(names)),
           p3=", ".join("'%s' using 1:%d with linespoints title '%s'" % (dat3, i + 2, n) for i, n in enumerate(names)))
    subprocess.run(["gnuplot"], input=gp, text=True, check=False)


t_start_global = time.monotonic()

if __name__ == "__main__":
    sys.exit(main())
