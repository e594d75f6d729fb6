"""The Debian package on this machine (issue 15 item 2): `make check-package`
builds it (`make deb`) and runs this file as root.

One test, in the order an administrator lives it: lintian accepts the
package without errors; `dpkg -i` installs it, makes the users, the empty
root-only users file and the mail directory; `popboxd -t` passes on the
configuration as installed; a user is added with `popbox hash`, mail comes
in through `popbox deliver`, and the installed popboxd (started as root, as
systemd would, on a free port instead of 110) serves a POP3 session with
poplib whose workers run as `popbox`; `dpkg -i` again keeps the admin's
edits; `dpkg -r` removes the programs and keeps the configuration; `dpkg -P`
removes the configuration and keeps the mail.

It changes the system (it is a package install): everything it adds is
removed again, except the system users, which Debian packages never remove.
"""

import glob
import grp
import os
import poplib
import pwd
import signal
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

from ports import free_port  # noqa: E402
from runaway import RUNAWAY_SEC, wait_until  # noqa: E402

CONF = "/etc/popbox/popboxd.conf"
USERS = "/etc/popbox/users"
MAIL = "/var/lib/popbox/mail"
MSG = b"From: a@example.org\nSubject: packaged\n\nDelivered by popbox deliver.\n"


def run(*cmd, input=None, check=True):
    r = subprocess.run(list(cmd), input=input, capture_output=True, timeout=RUNAWAY_SEC)
    if check:
        assert r.returncode == 0, (cmd, r.returncode, r.stdout.decode(errors="replace"),
                                   r.stderr.decode(errors="replace"))
    return r


def installed():
    r = run("dpkg-query", "-W", "-f=${Status}", "popbox", check=False)
    return r.returncode == 0 and b"installed" in r.stdout and b"not-installed" not in r.stdout


@pytest.fixture
def deb():
    if os.geteuid() != 0:
        pytest.fail("the package test installs into the system: run it as root (CI does)")
    d = os.environ.get("POPBOX_DEB_DIR")
    assert d, "POPBOX_DEB_DIR is not set: run `make check-package`"
    debs = glob.glob(os.path.join(d, "popbox_*.deb"))
    changes = glob.glob(os.path.join(d, "popbox_*.changes"))
    assert len(debs) == 1 and len(changes) == 1, (debs, changes)
    if installed() or os.path.exists(CONF):
        run("dpkg", "-P", "popbox")      # a run that died half-way
    yield debs[0], changes[0]
    if installed() or run("dpkg-query", "-W", "popbox", check=False).returncode == 0:
        run("dpkg", "-P", "popbox", check=False)
    run("rm", "-rf", os.path.join(MAIL, "tester"), check=False)
    for d in (MAIL, "/var/lib/popbox"):
        if os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)


def test_install_serve_remove_purge(deb):
    path, changes = deb
    # Errors fail; warnings are printed by lintian and shown on failure.
    r = run("lintian", "--fail-on", "error", changes, check=False)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert b"E: " not in r.stdout, r.stdout.decode()

    run("dpkg", "-i", path)
    assert installed()
    popbox_uid = pwd.getpwnam("popbox").pw_uid
    assert pwd.getpwnam("popbox-auth").pw_uid not in (0, popbox_uid)
    st = os.stat(USERS)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600), oct(st.st_mode)
    st = os.stat(MAIL)
    assert st.st_uid == popbox_uid and st.st_gid == grp.getgrnam("popbox").gr_gid
    for f in ("/usr/sbin/popboxd", "/usr/bin/popbox", "/etc/pam.d/popbox",
              "/lib/systemd/system/popboxd.service", "/lib/systemd/system/popboxd.socket",
              "/lib/systemd/system/popboxd-pop3s.socket",
              "/lib/systemd/system/popboxd-lmtp.socket",
              "/usr/lib/systemd/user/popbox-fetch@.service",
              "/usr/lib/systemd/user/popbox-fetch@.timer",
              "/usr/share/man/man8/popboxd.8.gz", "/usr/share/man/man5/popboxd.conf.5.gz",
              "/usr/share/man/man1/popbox.1.gz", "/usr/share/doc/popbox/README.md.gz"):
        assert os.path.exists(f), f
    service = open("/lib/systemd/system/popboxd.service").read()
    assert "ExecStart=/usr/sbin/popboxd -f -c /etc/popbox/popboxd.conf" in service
    # The service is enabled, the socket units are not (their addresses
    # must be made to match the config first).
    wants = "/etc/systemd/system/multi-user.target.wants/popboxd.service"
    assert os.path.islink(wants), wants
    assert not os.path.exists("/etc/systemd/system/sockets.target.wants/popboxd.socket")
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "popbox").stdout.decode()
    assert CONF in conffiles and "/etc/pam.d/popbox" in conffiles, conffiles

    # Valid as installed, and listening on loopback only.
    out = run("/usr/sbin/popboxd", "-t", "-c", CONF).stdout.decode()
    assert "is valid" in out, out
    conf = open(CONF).read()
    listen = [l for l in conf.splitlines() if l.startswith("listen")]
    assert listen == ["listen = 127.0.0.1:110"], listen

    # A user and a message, the way the README says.
    field = run("/usr/bin/popbox", "hash", "--scheme", "SHA512-CRYPT",
                input=b"packaged secret\n").stdout.decode().strip()
    assert field.startswith("{SHA512-CRYPT}$6$"), field
    with open(USERS, "a") as f:
        f.write("tester:%s\n" % field)
    run("/usr/bin/popbox", "deliver", "-c", CONF, "tester", input=MSG)

    # The installed daemon with the installed configuration, on a free port.
    tmp = tempfile.mkdtemp(prefix="popbox-deb-")
    port = free_port()
    own = os.path.join(tmp, "popboxd.conf")
    with open(own, "w") as f:
        f.write(conf.replace("listen = 127.0.0.1:110", "listen = 127.0.0.1:%d" % port))
    log = open(os.path.join(tmp, "log"), "w+b")
    proc = subprocess.Popen(["/usr/sbin/popboxd", "-f", "-c", own], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def connect():
            try:
                return poplib.POP3("127.0.0.1", port, timeout=RUNAWAY_SEC)
            except ConnectionRefusedError:
                assert proc.poll() is None, open(log.name).read()
                return None
        p = wait_until(connect, "the installed popboxd listening")
        p.user("tester")
        p.pass_("packaged secret")
        wire = MSG.replace(b"\n", b"\r\n")
        assert p.stat() == (1, len(wire))
        assert b"\r\n".join(p.retr(1)[1]) + b"\r\n" == wire
        workers = [int(c) for c in open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)).read().split()]
        comms = {}
        for c in workers:
            status = open("/proc/%d/status" % c).read()
            uid = int([l for l in status.splitlines() if l.startswith("Uid:")][0].split()[1])
            comms[open("/proc/%d/comm" % c).read().strip()] = uid
        assert comms.get("popboxd-worker") == popbox_uid, comms
        assert comms.get("popboxd-auth") == pwd.getpwnam("popbox-auth").pw_uid, comms
        p.dele(1)
        p.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(RUNAWAY_SEC)
    assert rc == 0, open(log.name).read()
    assert not os.listdir(os.path.join(MAIL, "tester", "new"))
    assert not os.listdir(os.path.join(MAIL, "tester", "cur"))
    # Mail kept for the purge check below.
    run("/usr/bin/popbox", "deliver", "-c", CONF, "tester", input=MSG)

    # Reinstall (the upgrade path of the maintainer scripts): the admin's
    # edit of the conffile and the users file stay.
    with open(CONF, "a") as f:
        f.write("# edited by the admin\n")
    users_before = open(USERS).read()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["dpkg", "--force-confold", "-i", path], capture_output=True, env=env,
                       timeout=RUNAWAY_SEC)
    assert r.returncode == 0, r.stderr.decode()
    assert open(CONF).read().endswith("# edited by the admin\n")
    assert open(USERS).read() == users_before

    # Remove: the programs go, the configuration stays.
    run("dpkg", "-r", "popbox")
    assert not os.path.exists("/usr/sbin/popboxd")
    assert not os.path.exists("/lib/systemd/system/popboxd.service")
    assert os.path.exists(CONF) and os.path.exists(USERS)

    # Purge: the configuration goes, the mail stays.
    run("dpkg", "-P", "popbox")
    assert not installed()
    assert not os.path.exists("/etc/popbox"), os.listdir("/etc/popbox")
    assert not os.path.exists("/etc/pam.d/popbox")
    assert not os.path.lexists(wants)
    assert len(os.listdir(os.path.join(MAIL, "tester", "new"))) == 1
    pwd.getpwnam("popbox")   # the users stay (uids are never reused)
