"""popbox fetch --daemon (issue 16 item 4): each account on its own
schedule; the server's LOGIN-DELAY stretches the interval; [IN-USE] makes
the account back off (the wait doubles); SIGTERM ends the daemon with 0.
Two scripted servers, one daemon with --interval 1s. Only lower bounds on
the gaps between logins are checked (a loaded machine makes them longer,
never shorter), and the waits the daemon announces."""

import signal
import subprocess
import time

from fake_pop3 import FakePop3
from fetch_env import RUNAWAY_SEC, make_message, read_maildir


class TimedPop3(FakePop3):
    """Records when each session started (monotonic)."""

    def __init__(self, *a, **kw):
        self.starts = []
        super().__init__(*a, **kw)

    def _session(self, conn):
        self.starts.append(time.monotonic())
        return super()._session(conn)


def account(name, srv, maildir):
    return ("[account %s]\nhost = 127.0.0.1\nport = %d\ntls = off\nallow_plaintext = yes\n"
            "user = u\npassword = pw\ndeliver = maildir:%s\n" % (name, srv.port, maildir))


def test_login_delay_and_in_use_backoff(client, tmp_path):
    delayed = TimedPop3(messages=[make_message(1)], capa=("USER", "UIDL", "LOGIN-DELAY 2"))
    busy = TimedPop3(messages=[make_message(2)], capa=("USER", "UIDL"),
                     pass_reply="-ERR [IN-USE] maildrop is locked by another session")
    proc = None
    try:
        client.write_config(account("delayed", delayed, tmp_path / "D") +
                            account("busy", busy, tmp_path / "B"))
        proc = subprocess.Popen([client.bin, "fetch", "--daemon", "--interval", "1s"],
                                env=client.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + RUNAWAY_SEC
        while time.monotonic() < deadline and (len(delayed.starts) < 3 or
                                               len(busy.starts) < 3):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=RUNAWAY_SEC)
        out, err = out.decode(), err.decode()
        assert proc.returncode == 0, err
        assert "daemon: stopping (signal 15)" in err
        # LOGIN-DELAY 2 over --interval 1s: two seconds between logins
        d = delayed.starts
        assert len(d) >= 3
        assert all(b - a >= 1.5 for a, b in zip(d, d[1:])), d
        assert len(read_maildir(str(tmp_path / "D"))) == 1      # delivered once
        assert out.count("delayed: fetched 1 ") == 1, out
        # [IN-USE]: 1 s, then 2 s, then 4 s
        b = busy.starts
        assert b[2] - b[1] >= 1.5, b
        assert "busy: [IN-USE]: another client has the maildrop (exit 75, 1 in a row); " \
               "next attempt in 1 s" in err, err
        assert "(exit 75, 2 in a row); next attempt in 2 s" in err, err
        assert busy.deleted == set() and read_maildir(str(tmp_path / "B")) == {}
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        delayed.stop()
        busy.stop()


def test_daemon_options(client, tmp_path):
    srv = FakePop3(capa=("USER", "UIDL"))
    try:
        client.write_config(account("a", srv, tmp_path / "A"))
        p = client.fetch("--daemon", "--interval", "0")
        assert p.returncode == 64 and "--interval must be" in p.err
        p = client.fetch("--daemon", "--list")
        assert p.returncode == 64 and "does not go with --list" in p.err
    finally:
        srv.stop()
