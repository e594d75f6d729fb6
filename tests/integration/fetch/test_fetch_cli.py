"""Configuration, command line and exit codes; servers without CAPA/UIDL."""

import os

from fake_pop3 import FakePop3
from fetch_env import digest_counts, make_message, read_maildir


def test_config_with_password_must_be_private(client, mailbox, account_conf):
    mailbox.deliver(make_message(1))
    account_conf(mailbox)
    os.chmod(client.config, 0o644)
    p = client.fetch(check=78)
    assert "chmod 600" in p.err and "readable by others" in p.err
    assert mailbox.count() == 1
    # without a password key the same mode is fine
    account_conf(mailbox, password=False,
                 extra={"password_command": "printf '%%s\\nsecond line\\n' '%s'" % mailbox.password})
    os.chmod(client.config, 0o644)
    client.fetch(check=0)
    assert mailbox.count() == 0


def test_password_command_failure(client, mailbox, account_conf):
    account_conf(mailbox, password=False, extra={"password_command": "exit 3"})
    p = client.fetch(check=78)
    assert "password_command" in p.err


def test_password_never_on_command_line(client, tmp_path):
    p = client.fetch("--host", "127.0.0.1", "--user", "u", "--password", "x",
                     "--deliver", "maildir:%s" % tmp_path, check=78)
    assert "never accepted on the command line" in p.err


def test_one_off_command_line_account(client, dovecot, mailbox, tmp_path):
    mailbox.deliver_many([make_message(1), make_message(2)])
    pwfile = tmp_path / "pw"
    pwfile.write_text(mailbox.password + "\n")
    client.fetch("--host", "127.0.0.1", "--port", str(dovecot.pop3s_port), "--tls", "implicit",
                 "--tls-trust-file", dovecot.ca.ca, "--user", mailbox.user,
                 "--password-command", "cat %s" % pwfile,
                 "--deliver", "maildir:%s" % (tmp_path / "Mail"), "-q", check=0)
    assert len(read_maildir(str(tmp_path / "Mail"))) == 2
    assert mailbox.count() == 0


def test_config_errors_are_78(client, tmp_path):
    client.write_config("[account a]\nhost = x\nbogus = 1\n")
    p = client.fetch(check=78)
    assert "accounts.conf:3" in p.err and "bogus" in p.err
    client.write_config("[account a]\nhost = x\nuser = u\n")
    p = client.fetch(check=78)
    assert "no deliver" in p.err
    client.write_config("[account a]\nhost = x\nuser = u\ndeliver = maildir:/tmp/x\n")
    p = client.fetch("nosuch", check=78)
    assert "no account named" in p.err
    p = client.fetch("--config", str(tmp_path / "missing.conf"), check=78)
    client.write_config("[account a]\nhost = x\nuser = u\ndeliver = maildir:/tmp/x\n"
                        "keep_days = soon\n")
    client.fetch(check=78)


def test_connection_refused_is_75(client, tmp_path):
    from fetch_env import free_port
    p = client.fetch("--host", "127.0.0.1", "--port", str(free_port()), "--user", "u",
                     "--password-command", "echo x", "--deliver", "maildir:%s" % tmp_path,
                     check=75)
    assert "cannot connect" in p.err


def test_selected_accounts_only(client, dovecot, tmp_path):
    mbs = [dovecot.add_user() for _ in range(2)]
    text = ""
    for i, mb in enumerate(mbs):
        mb.deliver(make_message(i))
        text += ("[account a%d]\nhost = 127.0.0.1\nport = %d\ntls = implicit\n"
                 "tls_trust_file = %s\nuser = %s\npassword = %s\ndeliver = maildir:%s\n\n" % (
                     i, dovecot.pop3s_port, dovecot.ca.ca, mb.user, mb.password,
                     tmp_path / ("M%d" % i)))
    client.write_config(text)
    p = client.fetch("a1", check=0)
    assert "a1:" in p.out and "a0:" not in p.out
    assert mbs[0].count() == 1 and mbs[1].count() == 0
    p = client.fetch(check=0)
    assert mbs[0].count() == 0


def test_server_without_capa_and_uidl(client, tmp_path):
    msgs = [make_message(i) for i in range(4)]
    srv = FakePop3(messages=msgs, capa=None, uidl=False)
    try:
        args = ["--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
                "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
                "--deliver", "maildir:%s" % (tmp_path / "M")]
        client.fetch(*args, check=0)
        assert digest_counts(read_maildir(str(tmp_path / "M")).values()) == digest_counts(msgs)
        assert len(srv.deleted) == 4
        # keep mode needs UIDL: refused clearly, nothing fetched
        srv.messages.append(make_message(9))
        p = client.fetch(*(args + ["--keep"]), check=69)
        assert "UIDL" in p.err
    finally:
        srv.stop()


def test_verbose_trace_masks_secrets(client, mailbox, account_conf):
    account_conf(mailbox, extra={"auth": "user"})
    p = client.fetch("-v", check=0)
    assert "C: PASS ********" in p.err
    assert mailbox.password not in p.err


def test_help_and_usage(client):
    import subprocess
    p = subprocess.run([client.bin, "--help"], capture_output=True)
    assert p.returncode == 0 and b"fetch" in p.stdout
    p = client.fetch("--help", check=0)
    assert "--keep-days" in p.out and "--tls-fingerprint" in p.out
    p = subprocess.run([client.bin, "nosuch"], capture_output=True)
    assert p.returncode == 64


def test_rebuild_state_needs_a_maildir(client, mailbox, account_conf, tmp_path):
    account_conf(mailbox, deliver="mbox:%s" % (tmp_path / "mbox"))
    p = client.fetch("--rebuild-state", "test", check=78)
    assert "Maildir" in p.err
