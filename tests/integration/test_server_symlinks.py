"""No symbolic link that the mail user or the run_as user could have made is
followed: not in the mail location, not for the pid file in the state
directory. The mail location is resolved without following symbolic links that the
mail user could have placed (docs/DESIGN.md "Storage"): with
mail = maildir:~/mail/Maildir a user who turns ~/mail into a link to another
user's directory gets an error, not the other user's mail. Links that only
the administrator can change are followed."""

import os

import pytest

from popbox_server import wire_form


def is_err(line):
    return line.startswith(b"-ERR")


def home_server(server_factory):
    srv = server_factory(start=False)
    homes = {}
    for user in ("alice", "bob"):
        home = os.path.join(srv.base, "home", user)
        os.makedirs(home)
        srv._own(os.path.join(srv.base, "home"))
        srv._own(home)
        homes[user] = home
        srv.add_user(user, user + "pw", extra="::::%s:" % home)
    srv.config["mail"] = "maildir:~/mail/Maildir"
    return srv, homes


def make_maildir(srv, path):
    for sub in ("", "cur", "new", "tmp"):
        p = os.path.join(path, sub)
        os.makedirs(p, exist_ok=True)
        srv._own(p)
    srv._own(os.path.dirname(path))


def put_message(srv, maildir, name, data):
    path = os.path.join(maildir, "new", name)
    with open(path, "wb") as f:
        f.write(data)
    srv._own(path)
    return path


def check_alice_linked_to_bob(srv, homes):
    """bob has a message; alice's ~/mail is a link to bob's ~/mail. alice
    logs in with her own password and gets [SYS/PERM], not bob's mail, and
    nothing of bob's in the answer; bob is served as before."""
    bob_md = os.path.join(homes["bob"], "mail", "Maildir")
    make_maildir(srv, bob_md)
    secret = put_message(srv, bob_md, "1000.bob.host", b"Subject: for bob only\n\nsecret\n")
    os.symlink(os.path.join(homes["bob"], "mail"), os.path.join(homes["alice"], "mail"))
    srv.start()
    c = srv.connect()
    assert c.cmd("USER alice").startswith(b"+OK")
    st = c.cmd("PASS alicepw")
    assert is_err(st) and b"[SYS/PERM]" in st, st
    assert b"secret" not in st and b"bob" not in st, st
    c.close()
    assert os.path.exists(secret)
    assert "symbolic link" in srv.log()
    with srv.session("bob", "bobpw") as s:
        assert s.retr(1) == wire_form(b"Subject: for bob only\n\nsecret\n")
        s.quit()


def test_link_to_another_users_mail_is_not_followed(server_factory):
    """Homes and maildirs owned by the mail user (virtual hosting)."""
    srv, homes = home_server(server_factory)
    check_alice_linked_to_bob(srv, homes)


def test_no_maildrop_created_through_a_link(server_factory):
    srv, homes = home_server(server_factory)
    elsewhere = os.path.join(homes["bob"], "elsewhere")
    os.makedirs(elsewhere)
    srv._own(elsewhere)
    os.symlink(elsewhere, os.path.join(homes["alice"], "mail"))
    srv.start()
    c = srv.connect()
    assert c.cmd("USER alice").startswith(b"+OK")
    assert is_err(c.cmd("PASS alicepw"))
    c.close()
    assert os.listdir(elsewhere) == []


def test_link_in_a_directory_only_root_can_change_is_followed(server_factory):
    """links/mail -> the real mail root. As root (CI) links/ is root's with
    mode 0555: only the administrator could have made the link, so it is
    followed. Run as another user, links/ is that user's own directory: its
    owner could have made the link, so it is refused."""
    srv = server_factory(start=False)
    links = os.path.join(srv.base, "links")
    os.makedirs(links)
    os.symlink(srv.mail_root, os.path.join(links, "mail"))
    os.chmod(links, 0o555)
    srv.config["mail"] = "maildir:%s/mail/%%u" % links
    name = srv.deliver(b"Subject: through the admin's link\n\nhello\n")
    srv.start()
    try:
        if srv.as_root:
            with srv.session() as c:
                assert c.uidl() == {1: name}
                assert c.retr(1) == wire_form(b"Subject: through the admin's link\n\nhello\n")
                c.quit()
        else:
            c = srv.connect()
            assert c.cmd("USER alice").startswith(b"+OK")
            st = c.cmd("PASS secret")
            assert is_err(st) and b"[SYS/PERM]" in st, st
            c.close()
    finally:
        os.chmod(links, 0o755)


def test_link_in_a_local_users_home_is_not_followed(server_factory):
    """The audit's case: homes owned by local users (not by root, not by the
    mail user), mail = maildir:~/mail/Maildir with maildirs owned by the
    mail user. alice turns ~/mail into a link to bob's ~/mail: she gets an
    error, not bob's mail. Needs root to give the homes their owners."""
    srv, homes = home_server(server_factory)
    if not srv.as_root:
        pytest.skip("needs root to make homes owned by other users (CI runs as root)")
    os.chown(os.path.dirname(homes["alice"]), 0, 0)      # /home is root's
    for n, user in enumerate(("alice", "bob")):
        os.chown(homes[user], 23450 + n, 23450 + n)
        os.chmod(homes[user], 0o755)
    check_alice_linked_to_bob(srv, homes)


def test_pid_file_not_written_through_a_planted_link(server_factory):
    """The state directory belongs to the run_as user; a link planted there
    under the pid file's temporary name must not make the master (root in
    production) write into the file it points to."""
    srv = server_factory(start=False)
    victim = os.path.join(srv.base, "victim")
    with open(victim, "w") as f:
        f.write("precious\n")
    os.symlink(victim, os.path.join(srv.state_dir, "popboxd.pid.tmp"))
    srv.start()
    with open(victim) as f:
        assert f.read() == "precious\n"
    pidfile = os.path.join(srv.state_dir, "popboxd.pid")
    assert not os.path.islink(pidfile)
    with open(pidfile) as f:
        assert int(f.read()) == srv.pid
