"""Every device gets every message (issue 11, docs/DESIGN.md "Every device
gets every message"): USER#DEVICE logins with USER/PASS, APOP and SASL,
per-device views of one maildrop, deletion per device, the file removed
only when every active device deleted it, the classic login deleting for
everyone, idle devices, max_devices, invalid names, damage of the state
file, and independent clients (poplib, mpop, fetchmail) as devices.

Time is moved with POPBOX_TEST_CLOCK_OFFSET (seconds added to the clock of
the device decisions; docs/DESIGN.md), never with sleeps."""

import hashlib
import os
import shutil
import subprocess

import pytest

from popbox_server import RUNAWAY_SEC, wait_until, wire_form
from test_server_tls_lib import scram_login

DAY = 86400
TIMEOUT = RUNAWAY_SEC
PHONE, LAPTOP, WORK = "alice#phone", "alice#laptop", "alice#work"


_seq = [0]


def fill(server, n, user="alice"):
    """n messages, listed in the order made (names sort by delivery time,
    then by name)."""
    out = []
    for i in range(n):
        _seq[0] += 1
        data = b"Subject: message %d\n\nbody %d of the devices test\n" % (i, i)
        name = "1700000000.D%06d.devicestest" % _seq[0]
        out.append((server.deliver(data, user=user, name=name), data))
    return out


def login(server, name, password="secret"):
    """A poplib session of device name; retries while the previous session's
    lock is released ([IN-USE]), fails on any other refusal."""
    def attempt():
        p = server.poplib()
        p.user(name)
        try:
            p.pass_(password)
            return p
        except Exception as e:  # poplib.error_proto
            p.close()
            if b"[IN-USE]" not in str(e).encode():
                raise
            return None
    return wait_until(attempt, "the release of the maildrop lock", step=0.05)


def uidls(p):
    return {int(n): u for n, u in (ln.decode().split() for ln in p.uidl()[1])}


def refusal(server, name, password="secret"):
    """The answer to PASS of name (which must not log in)."""
    c = server.connect()
    assert c.cmd("USER " + name).startswith(b"+OK")
    st = c.cmd("PASS " + password)
    c.close()
    return st


def restart_at(server, offset_days):
    """Restart popboxd with its device clock offset_days ahead."""
    server.stop()
    server.env = dict(os.environ, POPBOX_TEST_CLOCK_OFFSET=str(int(offset_days * DAY)))
    server.start()


def test_every_device_gets_every_message(server):
    msgs = fill(server, 3)
    names = [n for n, _ in msgs]
    # The laptop is known (first login), keeps everything.
    lap = login(server, LAPTOP)
    assert lap.stat()[0] == 3
    lap.quit()
    # The phone downloads and deletes everything.
    ph = login(server, PHONE)
    assert sorted(uidls(ph).values()) == sorted(names)
    for i in range(1, 4):
        assert b"\r\n".join(ph.retr(i)[1]) + b"\r\n" == wire_form(msgs[i - 1][1])
        ph.dele(i)
    assert ph.quit().startswith(b"+OK")
    # The files are still there: the laptop has not deleted them.
    assert sorted(server.message_files()) == sorted(names)
    # The phone sees none of them again; the laptop sees all, same UIDLs.
    ph = login(server, PHONE)
    assert ph.stat() == (0, 0)
    ph.quit()
    lap = login(server, "alice#LAPTOP")       # names are case-insensitive
    got = uidls(lap)
    assert sorted(got.values()) == sorted(names)
    assert b"\r\n".join(lap.retr(2)[1]) + b"\r\n" == wire_form(msgs[1][1])
    # The laptop deletes message 2: the last active device, so the file goes.
    lap.dele(2)
    lap.quit()
    left = server.message_files()
    assert sorted(left) == sorted([names[0], names[2]])
    # A new message reaches both devices.
    new = fill(server, 1)[0][0]
    for dev in (PHONE, LAPTOP):
        p = login(server, dev)
        assert new in uidls(p).values()
        p.quit()
    assert "device=phone" in server.log() and "device=laptop" in server.log()


def test_classic_login_deletes_for_everyone_and_rset(server):
    msgs = fill(server, 3)
    for dev in (PHONE, LAPTOP):
        login(server, dev).quit()
    ph = login(server, PHONE)
    ph.dele(1)
    ph.rset()                                 # RSET forgets the mark
    ph.dele(3)
    ph.quit()
    assert len(server.message_files()) == 3   # the laptop still holds 3
    classic = login(server, "alice")
    assert classic.stat()[0] == 3             # classic sees every file
    classic.dele(1)
    classic.quit()
    files = server.message_files()
    assert msgs[0][0] not in files and len(files) == 2
    lap = login(server, LAPTOP)
    assert sorted(uidls(lap).values()) == sorted([msgs[1][0], msgs[2][0]])
    lap.quit()
    ph = login(server, PHONE)
    assert list(uidls(ph).values()) == [msgs[1][0]]
    ph.quit()


def test_in_use_across_devices(server):
    fill(server, 1)
    ph = login(server, PHONE)
    st = refusal(server, LAPTOP)
    assert st.startswith(b"-ERR [IN-USE]"), st
    ph.quit()


def test_invalid_device_names_refused_after_authentication(server):
    fill(server, 1)
    for bad in ("alice#", "alice#" + "x" * 33, "alice#ph/one", "alice#caf\xe9"):
        st = refusal(server, bad)
        assert st.startswith(b"-ERR [SYS/PERM]") and b"device name" in st, (bad, st)
    # A wrong password with a bad device name is a plain failed login.
    st = refusal(server, "alice#", password="wrong")
    assert st.startswith(b"-ERR [AUTH]"), st
    # An unknown user with a good device name too.
    assert refusal(server, "mallory#phone").startswith(b"-ERR [AUTH]")
    # The last separator splits: "a#b#c" is user "a#b".
    assert refusal(server, "alice#x#phone").startswith(b"-ERR [AUTH]")
    # "." and ".." are names like any other, never paths.
    for odd in ("alice#.", "alice#.."):
        p = login(server, odd)
        assert p.stat()[0] == 1
        p.quit()


def test_devices_off_takes_the_name_whole(server_factory):
    srv = server_factory(users={"alice": "secret", "bob#x": "pw"}, config={"devices": "no"})
    fill(srv, 1)
    assert refusal(srv, PHONE).startswith(b"-ERR [AUTH]")
    p = login(srv, "bob#x", "pw")
    assert p.stat() == (0, 0)
    p.quit()
    assert not os.path.exists(os.path.join(srv.maildir(), "popbox.devices"))


def test_max_devices_and_idle_devices(server_factory):
    srv = server_factory(config={"max_devices": "2", "device_idle_days": "30"})
    msgs = fill(srv, 2)
    login(srv, PHONE).quit()
    login(srv, LAPTOP).quit()
    st = refusal(srv, WORK)
    assert st.startswith(b"-ERR [SYS/PERM]") and b"max_devices 2" in st and b"popbox devices" in st, st
    login(srv, PHONE).quit()                  # known devices still log in
    # The laptop deletes message 1 and then stays away for 31 days.
    lap = login(srv, LAPTOP)
    lap.dele(1)
    lap.quit()
    restart_at(srv, 31)
    # The phone kept logging in; the laptop is idle now and holds nothing
    # back: the phone's DELE of message 2 removes the file at once.
    ph = login(srv, PHONE)
    assert ph.stat()[0] == 2
    n = [k for k, u in uidls(ph).items() if u == msgs[1][0]][0]
    ph.dele(n)
    ph.quit()
    assert msgs[1][0] not in srv.message_files()
    # Only active devices count: a new device is accepted now.
    login(srv, WORK).quit()
    # The laptop returns: it does not see message 1 it deleted before.
    lap = login(srv, LAPTOP)
    assert msgs[0][0] not in uidls(lap).values()
    lap.quit()


def test_sasl_plain_scram_and_apop_with_device(server_factory):
    srv = server_factory(config={"apop": "yes"})
    msgs = fill(srv, 2)
    import base64
    c = srv.connect()
    st, _, _ = scram_login(c, "alice#laptop", "secret")
    assert st.startswith(b"+OK"), st
    assert c.stat()[0] == 2
    assert c.cmd("QUIT").startswith(b"+OK")
    c.close()
    c = srv.connect()
    st = c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice#phone\0secret").decode())
    assert st.startswith(b"+OK"), st
    assert c.cmd("DELE 1").startswith(b"+OK")
    assert c.cmd("QUIT").startswith(b"+OK")
    c.close()
    # APOP: the digest is over the greeting's stamp and the password only.
    c = srv.connect(read_greeting=False)
    greeting = c.readline()
    stamp = greeting[greeting.index(b"<"):greeting.index(b">") + 1]
    digest = hashlib.md5(stamp + b"secret").hexdigest()
    st = c.cmd("APOP alice#phone " + digest)
    assert st.startswith(b"+OK"), st
    assert c.stat()[0] == 1                   # the phone deleted one
    assert c.cmd("QUIT").startswith(b"+OK")
    c.close()
    assert len(srv.message_files()) == 2      # the laptop holds both
    # SCRAM with a wrong password and a device: a failed login.
    c = srv.connect()
    st, _, _ = scram_login(c, "alice#laptop", "wrong")
    assert st.startswith(b"-ERR [AUTH]"), st
    c.close()
    # SCRAM of an unknown user: the fake salt is the user's, whatever
    # the device (else two devices would tell a real user from a fake).
    salts = []
    for name in ("ghost#a", "ghost#b"):
        c = srv.connect()
        from test_server_tls_lib import ScramClient, b64, unb64
        sc = ScramClient(name, "x", "sha256")
        st = c.cmd("AUTH SCRAM-SHA-256 %s" % b64(sc.first()))
        assert st.startswith(b"+ "), st
        first = unb64(st[2:]).decode()
        salts.append([kv for kv in first.split(",") if kv.startswith("s=")][0])
        c.close()
    assert salts[0] == salts[1]


def test_damaged_or_lost_state_loses_nothing(server):
    msgs = fill(server, 2)
    for dev in (PHONE, LAPTOP):
        login(server, dev).quit()
    state = os.path.join(server.maildir(), "popbox.devices")
    assert os.path.exists(state)
    # Damage in the middle of the file: a group that does not check.
    data = bytearray(open(state, "rb").read())
    i = data.index(b"N 2 ")
    data[i + 4:i + 5] = b"9"
    with open(state, "wb") as f:
        f.write(bytes(data))
    ph = login(server, PHONE)
    ph.dele(1)
    ph.dele(2)
    ph.quit()
    # During recovery no device's deletion removes a file.
    assert len(server.message_files()) == 2
    assert "is damaged" in server.log()
    # The file lost entirely (the marker says there was one): the same.
    os.unlink(state)
    lap = login(server, LAPTOP)
    assert lap.stat()[0] == 2
    lap.dele(1)
    lap.quit()
    assert len(server.message_files()) == 2
    assert "is missing but this maildrop had one" in server.log()


def test_interrupted_append_is_cut_off(server):
    msgs = fill(server, 2)
    for dev in (PHONE, LAPTOP):
        login(server, dev).quit()
    state = os.path.join(server.maildir(), "popbox.devices")
    # A write cut short: a record without its commit line.
    with open(state, "ab") as f:
        f.write(b"D 1 %s\nC 1 00" % msgs[0][0].encode())
    ph = login(server, PHONE)
    assert ph.stat()[0] == 2                   # the half-written deletion does not count
    ph.dele(2)
    ph.quit()
    assert "interrupted update" in server.log()
    lap = login(server, LAPTOP)
    assert lap.stat()[0] == 2
    lap.quit()


# ------------------------------------------------------------ other clients

def need(prog):
    path = shutil.which(prog)
    if path is None:
        pytest.skip("%s not installed (see tools/debian-packages.txt)" % prog)
    return path


def client_env(home):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["HOME"] = home
    env["LC_ALL"] = "C"
    return env


def mpop_run(server, home, user, keep):
    mpop = need("mpop")
    os.makedirs(home, mode=0o700, exist_ok=True)
    mbox = os.path.join(home, "out.mbox")
    if not os.path.exists(mbox):
        open(mbox, "wb").close()
    conf = os.path.join(home, "mpoprc")
    with open(conf, "w") as f:
        f.write("account default\nhost 127.0.0.1\nport %d\nuser %s\npassword secret\n"
                "auth user\ntls off\nkeep %s\nonly_new on\ntimeout %d\nuidls_file %s\n"
                "delivery mbox %s\n" % (server.port, user, "on" if keep else "off", TIMEOUT,
                                        os.path.join(home, "uidls"), mbox))
    os.chmod(conf, 0o600)
    r = subprocess.run([mpop, "-C", conf, "-q"], capture_output=True, timeout=TIMEOUT,
                       env=client_env(home))
    assert r.returncode == 0, (r.stdout, r.stderr)
    return open(mbox, "rb").read()


def fetchmail_run(server, home, user):
    fetchmail = need("fetchmail")
    os.makedirs(home, mode=0o700, exist_ok=True)
    out = os.path.join(home, "out")
    rc = os.path.join(home, ".fetchmailrc")
    with open(rc, "w") as f:
        f.write('poll 127.0.0.1 service %d protocol pop3 timeout %d\n'
                '  user "%s" password "secret" is "%s" here\n'
                '  sslproto "" no keep fetchall mda "cat >> %s"\n'
                % (server.port, TIMEOUT, user, os.environ.get("USER", "root"), out))
    os.chmod(rc, 0o600)
    r = subprocess.run([fetchmail, "-f", rc, "--idfile", os.path.join(home, ".fetchids"),
                        "--pidfile", os.path.join(home, "fetchmail.pid"), "--nodetach"],
                       capture_output=True, timeout=TIMEOUT, env=client_env(home))
    assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
    return open(out, "rb").read() if os.path.exists(out) else b""


def getmail_run(server, home, user):
    getmail = need("getmail")
    md = os.path.join(home, "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub), exist_ok=True)
    as_user = ""
    if os.geteuid() == 0:
        # getmail refuses to deliver as root: deliver as nobody
        os.chmod(home, 0o755)
        for d in (md,) + tuple(os.path.join(md, sub) for sub in ("cur", "new", "tmp")):
            os.chown(d, server.uid, server.gid)
        as_user = "user = nobody\n"
    rc = os.path.join(home, "getmailrc")
    with open(rc, "w") as f:
        f.write("[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\nport = %d\n"
                "username = %s\npassword = secret\ntimeout = %d\n\n"
                "[destination]\ntype = Maildir\npath = %s/\n%s\n"
                "[options]\nread_all = true\ndelete = true\nverbose = 0\n"
                "message_log_syslog = false\n" % (server.port, user, TIMEOUT, md, as_user))
    r = subprocess.run([getmail, "--getmaildir", home, "--rcfile", rc], capture_output=True,
                       timeout=TIMEOUT, env=client_env(home))
    assert r.returncode == 0, (r.stdout, r.stderr)
    return b"\n".join(open(os.path.join(md, "new", n), "rb").read()
                      for n in os.listdir(os.path.join(md, "new")))


def test_independent_clients_as_devices(server):
    msgs = fill(server, 3)
    markers = [b"body %d of the devices test" % i for i in range(3)]
    # The devices known before anything is deleted.
    for dev in ("alice#mpopdel", "alice#mpopkeep", "alice#fetchmail", "alice#getmail"):
        login(server, dev).quit()
    # mpop in delete mode takes everything.
    got = mpop_run(server, os.path.join(server.base, "mpop-del"), "alice#mpopdel", keep=False)
    assert all(got.count(m) == 1 for m in markers), got[:400]
    assert len(server.message_files()) == 3
    # mpop in keep mode gets everything too, twice run, once each.
    home = os.path.join(server.base, "mpop-keep")
    mpop_run(server, home, "alice#mpopkeep", keep=True)
    got = mpop_run(server, home, "alice#mpopkeep", keep=True)
    assert all(got.count(m) == 1 for m in markers), got[:400]
    # fetchmail deletes: still there for mpopkeep.
    got = fetchmail_run(server, os.path.join(server.base, "fm"), "alice#fetchmail")
    assert all(got.count(m) == 1 for m in markers), got[:400]
    assert len(server.message_files()) == 3
    # getmail6 deletes too: still there for mpopkeep.
    home = os.path.join(server.base, "gm")
    os.makedirs(home, mode=0o700, exist_ok=True)
    got = getmail_run(server, home, "alice#getmail")
    assert all(got.count(m) == 1 for m in markers), got[:400]
    assert len(server.message_files()) == 3
    # curl, a device of its own (the # in the URL's user written %23),
    # reads message 1 by number.
    if shutil.which("curl"):
        r = subprocess.run(["curl", "-s", "--max-time", str(TIMEOUT),
                            "pop3://alice%%23curl:secret@127.0.0.1:%d/1" % server.port],
                           capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0 and markers[0] in r.stdout, r
        assert "device=curl" in server.log()
    # mpop in delete mode again: nothing new for it.
    got = mpop_run(server, os.path.join(server.base, "mpop-del"), "alice#mpopdel", keep=False)
    assert all(got.count(m) == 1 for m in markers)
    # The keeping device deletes at last (poplib); curl, known since its
    # login, still holds the files; when it deletes them too, they go.
    p = login(server, "alice#mpopkeep")
    for i in range(1, p.stat()[0] + 1):
        p.dele(i)
    p.quit()
    if shutil.which("curl"):
        assert len(server.message_files()) == 3
        p = login(server, "alice#curl")
        for i in range(1, p.stat()[0] + 1):
            p.dele(i)
        p.quit()
    assert server.message_files() == {}


def test_check_warns_about_names_with_the_separator(server_factory):
    from popbox_server import popboxd_path
    srv = server_factory(users={"alice": "secret", "bob#home": "pw"}, start=False)
    srv.port = 1
    srv.write_config()
    r = subprocess.run([popboxd_path(), "-t", "-c", srv.conf_path], capture_output=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert b"user bob#home contains the device separator '#'" in r.stderr, r.stderr
    srv.config["device_separator"] = "+"
    srv.write_config()
    r = subprocess.run([popboxd_path(), "-t", "-c", srv.conf_path], capture_output=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0 and b"device separator" not in r.stderr, r.stderr


# ------------------------------------------------------- LOGIN-DELAY, EXPIRE

def restart_after(server, seconds):
    server.stop()
    server.env = dict(os.environ, POPBOX_TEST_CLOCK_OFFSET=str(int(seconds)))
    server.start()


def capa(c):
    return c.multi("CAPA")[1].split(b"\r\n")


def test_login_delay_per_device_and_capa(server_factory):
    srv = server_factory(users={"alice": "secret"}, config={"login_delay": "5m"}, start=False)
    srv.add_user("bob", "pw", extra="::::::login_delay=0")
    srv.start()
    fill(srv, 1)
    c = srv.connect()
    assert b"LOGIN-DELAY 300 USER" in capa(c)
    c.close()
    login(srv, PHONE).quit()
    state = os.path.join(srv.maildir(), "popbox.devices")
    before = open(state, "rb").read()
    # The same device again: refused after the password, nothing changed,
    # and it is no failed login (the connection stays open after 3).
    c = srv.connect()
    for _ in range(4):
        assert c.cmd("USER " + PHONE).startswith(b"+OK")
        st = c.cmd("PASS secret")
        assert st.startswith(b"-ERR [LOGIN-DELAY]"), st
    c.close()
    assert open(state, "rb").read() == before
    # Another device of the same user is not delayed; classic logins are
    # one device of their own.
    login(srv, LAPTOP).quit()
    login(srv, "alice").quit()
    assert refusal(srv, "alice").startswith(b"-ERR [LOGIN-DELAY]")
    # After login, CAPA gives the user's value; bob has none.
    p = login(srv, "bob", "pw")
    lines = [ln for ln in p.capa().keys()]
    assert "LOGIN-DELAY" not in lines
    p.quit()
    login(srv, "bob", "pw").quit()          # bob: no delay
    # Five minutes later the phone may log in again.
    restart_after(srv, 301)
    p = login(srv, PHONE)
    assert p.capa()["LOGIN-DELAY"] == ["300"]
    p.quit()


def test_expire_zero_and_n(server_factory):
    srv = server_factory(config={"expire_days": "3"}, start=False)
    srv.add_user("carol", "pw", extra="::::::expire_days=0")
    srv.start()
    # carol, classic with EXPIRE 0: what she retrieved goes at QUIT; TOP
    # and a session without QUIT do not count.
    c_msgs = fill(srv, 3, user="carol")
    p = login(srv, "carol", "pw")
    assert p.capa()["EXPIRE"] == ["0"]
    p.retr(1)
    p.top(2, 0)
    p.quit()
    files = srv.message_files("carol")
    assert c_msgs[0][0] not in files and len(files) == 2
    c = srv.connect()
    c.login("carol", "pw")
    c.cmd("RETR 1")
    c.close()                               # no QUIT: no UPDATE
    assert len(srv.message_files("carol")) == 2
    # alice, EXPIRE 3, with two devices.
    c = srv.connect()
    assert b"EXPIRE 3 USER" in capa(c)
    c.close()
    msgs = fill(srv, 3)
    for dev in (PHONE, LAPTOP):
        p = login(srv, dev)
        assert p.capa()["EXPIRE"] == ["3"]
        p.quit()
    p = login(srv, PHONE)
    p.retr(1)
    p.retr(2)
    p.quit()
    p = login(srv, LAPTOP)
    p.retr(1)
    p.quit()
    restart_after(srv, 4 * DAY)
    # Message 1: retrieved by both devices 4 days ago, removed at this
    # login before the listing; 2: the laptop has not retrieved it; 3:
    # nobody has.
    p = login(srv, PHONE)
    got = sorted(uidls(p).values())
    p.quit()
    assert got == sorted([msgs[1][0], msgs[2][0]])
    assert sorted(srv.message_files()) == sorted([msgs[1][0], msgs[2][0]])
    assert "EXPIRE 3: 1 messages removed" in srv.log()


# ------------------------------------------------------------ admin command

def popbox(srv, *args, offset=0):
    from popbox_server import build_dir
    env = dict(os.environ, POPBOX_TEST_CLOCK_OFFSET=str(int(offset)))
    return subprocess.run([os.path.join(build_dir(), "popbox")] + list(args[:1]) +
                          ["-c", srv.conf_path] + list(args[1:]),
                          capture_output=True, timeout=TIMEOUT, env=env)


def test_admin_devices_and_expire(server_factory):
    srv = server_factory(config={"device_idle_days": "30"}, start=False)
    srv.add_user("carol", "pw", extra="::::::expire_days=3")
    srv.start()
    msgs = fill(srv, 3)
    for dev in (PHONE, LAPTOP, WORK):
        login(srv, dev).quit()
    ph = login(srv, PHONE)
    ph.dele(1)
    ph.dele(2)
    ph.quit()
    lap = login(srv, LAPTOP)
    lap.dele(1)
    lap.quit()
    r = popbox(srv, "devices", "alice")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert "phone" in out and "laptop" in out and "work" in out, out
    held = {ln.split()[0]: int(ln.rsplit(" ", 1)[1]) for ln in out.splitlines()[1:]}
    assert held == {"phone": 1, "laptop": 2, "work": 3}, out
    # Unknown device, unknown user: 67 (EX_NOUSER).
    assert popbox(srv, "devices", "alice", "--forget", "tablet").returncode == 67
    assert popbox(srv, "devices", "nobody-here").returncode == 67
    # A user in a session is skipped with 75 (EX_TEMPFAIL), nothing changed.
    p = login(srv, "alice#work")
    r = popbox(srv, "devices", "alice", "--forget", "work")
    assert r.returncode == 75 and b"in a POP3 session" in r.stderr, r
    p.quit()
    # Forgetting the work PC: message 1 was deleted by every other device.
    r = popbox(srv, "devices", "alice", "--forget", "WORK")
    assert r.returncode == 0, r.stderr
    assert sorted(srv.message_files()) == sorted([msgs[1][0], msgs[2][0]])
    # 31 days on, the laptop is idle (the phone logs in): message 2 is held
    # back by nobody active, and the expire run removes it.
    restart_after(srv, 31 * DAY)
    login(srv, PHONE).quit()
    r = popbox(srv, "expire", offset=31 * DAY)
    assert r.returncode == 0, r.stderr
    assert sorted(srv.message_files()) == [msgs[2][0]]
    assert b"1 messages removed" in r.stdout, r.stdout
    # carol (classic, EXPIRE 3): retrieved at day 31, expired at day 35.
    c_msgs = fill(srv, 2, user="carol")
    p = login(srv, "carol", "pw")
    p.retr(1)
    p.quit()
    r = popbox(srv, "expire", "carol", offset=33 * DAY)
    assert r.returncode == 0 and len(srv.message_files("carol")) == 2, r
    r = popbox(srv, "expire", "carol", offset=35 * DAY)
    assert r.returncode == 0, r.stderr
    assert list(srv.message_files("carol")) == [c_msgs[1][0]]
    assert b"1 expired" in r.stdout
