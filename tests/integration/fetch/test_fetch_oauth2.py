"""popbox fetch with OAuth2 (issue 16 item 1): XOAUTH2 and OAUTHBEARER
against a scripted POP3 server that checks the bearer token, with the token
from oauth2_token_command or from the built-in flow. The provider is a local
HTTP token endpoint in Python on 127.0.0.1 (http:// is allowed only to a
loopback address), so the real libcurl and jansson code runs: `popbox
oauth2 ACCOUNT` by the device flow (RFC 8628) and by the loopback redirect
with PKCE (RFC 8252, RFC 7636; the test plays the browser), the cached
access token, the refresh grant, a revoked refresh token (invalid_grant,
exit 77), a provider that fails (5xx, exit 75), a token the POP3 server
refuses (exit 77, and the cached token is dropped); and a real Dovecot
whose oauth2 passdb checks the token at the endpoint's introspection URL."""

import base64
import hashlib
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fake_pop3 import FakePop3
from fetch_env import RUNAWAY_SEC, make_message, read_maildir


class Provider:
    """A token endpoint (/token), a device endpoint (/device) and nothing
    else. It issues access tokens at1, at2, ... and refresh tokens r1, r2,
    ...; `revoked` refresh tokens get invalid_grant; `fail_next` answers
    the next token request with that HTTP status."""

    def __init__(self):
        self.requests = []            # (path, form dict)
        self.n = 0
        self.refresh = set()
        self.revoked = set()
        self.codes = {}               # authorization code -> PKCE challenge
        self.device_pending = 0       # authorization_pending answers left
        self.fail_next = None
        self.expires_in = 3600
        self.active_tokens = {}       # access token -> user, for /introspect
        self.introspected = []
        prov = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                prov.requests.append((self.path, form))
                status, body = prov.answer(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def issue(self):
        self.n += 1
        r = "r%d" % self.n
        self.refresh.add(r)
        return 200, {"access_token": "at%d" % self.n, "token_type": "Bearer",
                     "expires_in": self.expires_in, "refresh_token": r}

    def answer(self, path, form):
        if self.fail_next:
            status, self.fail_next = self.fail_next, None
            return status, {"error": "server_error"}
        if path != "/introspect" and form.get("client_id") != "cid":
            return 401, {"error": "invalid_client"}
        if path == "/introspect":
            # RFC 7662, as Dovecot's oauth2 passdb asks (introspection_mode = post)
            self.introspected.append(form.get("token"))
            user = self.active_tokens.get(form.get("token"))
            return 200, ({"active": "true", "username": user} if user else {"active": "false"})
        if path == "/device":
            return 200, {"device_code": "dev-1", "user_code": "WXYZ-1234",
                         "verification_uri": self.url + "/verify", "expires_in": 60,
                         "interval": 1}
        if path != "/token":
            return 404, {"error": "invalid_request"}
        grant = form.get("grant_type")
        if form.get("client_secret") != "csecret":
            return 401, {"error": "invalid_client"}
        if grant == "refresh_token":
            r = form.get("refresh_token")
            if r in self.revoked or r not in self.refresh:
                return 400, {"error": "invalid_grant",
                             "error_description": "Token has been expired or revoked."}
            return self.issue()
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            if form.get("device_code") != "dev-1":
                return 400, {"error": "invalid_grant"}
            if self.device_pending > 0:
                self.device_pending -= 1
                return 400, {"error": "authorization_pending"}
            return self.issue()
        if grant == "authorization_code":
            challenge = self.codes.pop(form.get("code"), None)
            verifier = form.get("code_verifier", "")
            got = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if challenge is None or got.rstrip(b"=").decode() != challenge:
                return 400, {"error": "invalid_grant", "error_description": "PKCE failed"}
            return self.issue()
        return 400, {"error": "unsupported_grant_type"}

    def grants(self):
        return [f.get("grant_type") for p, f in self.requests if p == "/token"]


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.stop()


@pytest.fixture
def pop3():
    srv = FakePop3(messages=[make_message(1), make_message(2)],
                   capa=("UIDL", "SASL OAUTHBEARER XOAUTH2"))
    yield srv
    srv.stop()


def write_conf(client, tmp_path, pop3, provider=None, extra=None):
    keys = {"host": "127.0.0.1", "port": pop3.port, "tls": "off", "allow_plaintext": "yes",
            "user": "me@example.com", "deliver": "maildir:%s" % (tmp_path / "Mail")}
    if provider is not None:
        keys.update({"oauth2_client_id": "cid", "oauth2_client_secret": "csecret",
                     "oauth2_token_endpoint": provider.url + "/token",
                     "oauth2_device_endpoint": provider.url + "/device",
                     "oauth2_auth_endpoint": provider.url + "/authorize",
                     "oauth2_scope": "mail offline_access"})
    keys.update(extra or {})
    client.write_config("[account acct]\n" + "".join(
        "%s = %s\n" % (k, v) for k, v in keys.items() if v is not None))


def oauth2(client, *args, timeout=RUNAWAY_SEC):
    p = subprocess.run([client.bin, "oauth2"] + list(args), env=client.env,
                       capture_output=True, timeout=timeout)
    p.out, p.err = p.stdout.decode(), p.stderr.decode()
    return p


def token_file(client):
    return os.path.join(client.state_dir, "acct.oauth2")


def token_file_path(client):
    os.makedirs(client.state_dir, mode=0o700, exist_ok=True)
    return token_file(client)


def load_tokens(client):
    with open(token_file(client)) as f:
        return json.load(f)


def test_token_command_and_auto(client, tmp_path, pop3):
    """oauth2_token_command with auth = auto: OAUTHBEARER (RFC 7628) is
    preferred to XOAUTH2, and carries the user, host, port and token."""
    write_conf(client, tmp_path, pop3, extra={"oauth2_token_command": "echo tok-123"})
    client.fetch(check=0)
    assert pop3.oauth_mechs == ["OAUTHBEARER"]
    assert pop3.auth_payload.startswith(b"n,a=me@example.com,\x01host=127.0.0.1\x01port=%d\x01"
                                        % pop3.port)
    assert pop3.auth_payload.endswith(b"auth=Bearer tok-123\x01\x01")
    assert len(read_maildir(str(tmp_path / "Mail"))) == 2
    # XOAUTH2 named, and a server that offers only XOAUTH2
    pop3.capa = ("UIDL", "SASL XOAUTH2")
    pop3.messages.append(make_message(3))
    client.fetch(check=0)
    assert pop3.oauth_mechs[-1] == "XOAUTH2"
    assert pop3.auth_payload == b"user=me@example.com\x01auth=Bearer tok-123\x01\x01"
    # no OAuth mechanism offered: said so, nothing sent
    pop3.capa = ("UIDL", "SASL PLAIN")
    p = client.fetch()
    assert p.returncode == 69, p.err
    assert "offers neither OAUTHBEARER nor XOAUTH2" in p.err


def test_token_refused_by_server(client, tmp_path, pop3):
    """The RFC 7628 error challenge is answered and its status shown; 77."""
    pop3.oauth_challenge = True
    write_conf(client, tmp_path, pop3, extra={"oauth2_token_command": "echo stale"})
    p = client.fetch()
    assert p.returncode == 77, p.err
    assert "the server says the token is invalid_token" in p.err
    assert "AQ==" in pop3.received


def test_token_never_in_clear(client, tmp_path, pop3):
    write_conf(client, tmp_path, pop3, extra={"oauth2_token_command": "echo tok-123",
                                              "allow_plaintext": "no"})
    p = client.fetch()
    assert p.returncode == 78, p.err
    assert "unencrypted" in p.err
    assert pop3.oauth_mechs == []


def test_device_flow_then_cache_refresh_and_revocation(client, tmp_path, pop3, provider):
    write_conf(client, tmp_path, pop3, provider)
    # no refresh token yet: 77 and what to do
    p = client.fetch()
    assert p.returncode == 77, p.err
    assert "run popbox oauth2 acct once" in p.err

    provider.device_pending = 1
    issued_after = time.time()   # the token's lifetime counts from its issue
    p = oauth2(client, "acct")
    assert p.returncode == 0, p.err
    assert "WXYZ-1234" in p.out and provider.url + "/verify" in p.out
    assert provider.grants() == ["urn:ietf:params:oauth:grant-type:device_code"] * 2
    assert [f.get("scope") for pth, f in provider.requests if pth == "/device"] == \
        ["mail offline_access"]
    st = os.stat(token_file(client))
    assert st.st_mode & 0o777 == 0o600
    t = load_tokens(client)
    assert t["refresh_token"] == "r1" and t["access_token"] == "at1"
    # expires_in = 3600, less the client's safety margin
    assert t["expires_at"] > issued_after + 3000

    # the cached access token: no request to the provider
    pop3.token = "at1"
    client.fetch(check=0)
    assert pop3.oauth_mechs == ["OAUTHBEARER"]
    assert len(provider.grants()) == 2
    assert len(read_maildir(str(tmp_path / "Mail"))) == 2

    # expired: refreshed with r1 and the client's credentials, saved atomically
    t["expires_at"] = int(time.time()) - 10
    with open(token_file(client), "w") as f:
        json.dump(t, f)
    pop3.token = "at2"
    pop3.messages.append(make_message(3))
    client.fetch(check=0)
    assert provider.requests[-1][1] == {"grant_type": "refresh_token", "refresh_token": "r1",
                                        "client_id": "cid", "client_secret": "csecret"}
    t = load_tokens(client)
    assert t["refresh_token"] == "r2" and t["access_token"] == "at2"
    assert os.stat(token_file(client)).st_mode & 0o777 == 0o600

    # the server refuses the cached token: 77, and the cache is dropped, so
    # the next run refreshes
    pop3.token = "at3"
    p = client.fetch()
    assert p.returncode == 77, p.err
    assert "access_token" not in load_tokens(client)
    client.fetch(check=0)
    assert provider.grants()[-1] == "refresh_token"
    assert load_tokens(client)["refresh_token"] == "r3"

    # a provider in trouble: 75, the token file unchanged
    os.remove(token_file(client))
    with open(token_file(client), "w") as f:
        json.dump({"refresh_token": "r3"}, f)
    os.chmod(token_file(client), 0o600)
    provider.fail_next = 503
    p = client.fetch()
    assert p.returncode == 75, p.err
    assert load_tokens(client) == {"refresh_token": "r3"}

    # revoked: 77 and the plain words
    provider.revoked.add("r3")
    p = client.fetch()
    assert p.returncode == 77, p.err
    assert "invalid_grant" in p.err
    assert "revoked or has expired" in p.err and "run popbox oauth2 acct again" in p.err

    # a token file others can read is refused
    os.chmod(token_file(client), 0o644)
    p = client.fetch()
    assert p.returncode == 78, p.err
    assert "chmod 600" in p.err


def run_loopback(client, answer):
    """popbox oauth2 --flow loopback, with the test as the browser:
    answer(query of the authorization URL) -> the redirect's query."""
    proc = subprocess.Popen([client.bin, "oauth2", "--flow", "loopback", "--timeout", "60",
                             "acct"], env=client.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        url = None
        for _ in range(10):
            line = proc.stdout.readline().decode()
            if line.strip().startswith("http://127.0.0.1"):
                url = line.strip()
                break
        assert url is not None, proc.stderr.read()
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        back = q["redirect_uri"] + "?" + urllib.parse.urlencode(answer(q))
        with urllib.request.urlopen(back, timeout=RUNAWAY_SEC) as r:
            page = r.read()
        out, err = proc.communicate(timeout=RUNAWAY_SEC)
        return proc.returncode, q, page, out.decode(), err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_loopback_flow_with_pkce(client, tmp_path, pop3, provider):
    write_conf(client, tmp_path, pop3, provider)

    def approve(q):
        provider.codes["code-1"] = q["code_challenge"]
        return {"code": "code-1", "state": q["state"]}
    rc, q, page, out, err = run_loopback(client, approve)
    assert rc == 0, err
    assert q["response_type"] == "code" and q["client_id"] == "cid"
    assert q["code_challenge_method"] == "S256" and q["scope"] == "mail offline_access"
    assert q["redirect_uri"].startswith("http://127.0.0.1:")
    assert b"received the authorization" in page
    form = provider.requests[-1][1]
    assert form["grant_type"] == "authorization_code"
    assert form["redirect_uri"] == q["redirect_uri"]
    assert load_tokens(client)["refresh_token"] == "r1"
    pop3.token = "at1"
    client.fetch(check=0)

    # declined in the browser: 77, nothing saved
    os.remove(token_file(client))
    rc, q, page, out, err = run_loopback(
        client, lambda q: {"error": "access_denied", "state": q["state"]})
    assert rc == 77, err
    assert "access_denied" in err and "declined" in err
    assert not os.path.exists(token_file(client))

    # a redirect that does not carry our state: 77, no code exchanged
    n = len(provider.requests)
    rc, q, page, out, err = run_loopback(client, lambda q: {"code": "x", "state": "forged"})
    assert rc == 77, err
    assert "wrong state" in err
    assert len(provider.requests) == n


def test_endpoint_must_be_https_unless_loopback(client, tmp_path, pop3, provider):
    write_conf(client, tmp_path, pop3, provider,
               extra={"oauth2_token_endpoint": "http://example.com/token"})
    p = client.fetch()
    assert p.returncode == 78, p.err
    assert "must be an https:// URL" in p.err
    p = oauth2(client, "acct")
    assert p.returncode == 78, p.err
    # a wrong client id: the provider's invalid_client, in plain words
    write_conf(client, tmp_path, pop3, provider, extra={"oauth2_client_id": "other"})
    p = oauth2(client, "acct")
    assert p.returncode == 77, p.err
    assert "invalid_client" in p.err and "oauth2_client_id" in p.err


def test_against_dovecot_oauth2_passdb(client, tmp_path, provider):
    """Dovecot 2.3 with an oauth2 passdb that validates the bearer token at
    the provider's introspection endpoint (RFC 7662): popbox refreshes a
    token at the Python endpoint and logs in with OAUTHBEARER (auto), then
    XOAUTH2 (named), over STLS; a token the endpoint calls inactive is
    refused by Dovecot (77)."""
    import shutil
    import fetch_env
    if shutil.which("dovecot") is None:
        pytest.skip("dovecot is not installed (Debian package dovecot-pop3d)")
    ext = tmp_path / "dovecot-oauth2.conf.ext"
    ext.write_text("introspection_mode = post\nintrospection_url = %s/introspect\n"
                   "force_introspection = yes\nusername_attribute = username\n"
                   "active_attribute = active\nactive_value = true\n" % provider.url)
    os.chmod(str(tmp_path), 0o755)
    os.chmod(str(ext), 0o644)
    d = fetch_env.Dovecot(mechanisms="plain xoauth2 oauthbearer",
                          extra_config="passdb {\n  driver = oauth2\n  mechanisms = xoauth2 "
                                       "oauthbearer\n  args = %s\n}\n" % ext)
    try:
        d.start()
        mb = d.add_user()
        mb.deliver_many([make_message(1), make_message(2)])
        keys = {"host": "127.0.0.1", "port": d.pop3_port, "tls": "starttls",
                "tls_trust_file": d.ca.ca, "user": mb.user,
                "deliver": "maildir:%s" % (tmp_path / "Mail"),
                "oauth2_client_id": "cid", "oauth2_client_secret": "csecret",
                "oauth2_token_endpoint": provider.url + "/token"}
        client.write_config("[account acct]\n" + "".join(
            "%s = %s\n" % (k, v) for k, v in keys.items()))
        with open(token_file_path(client), "w") as f:
            json.dump({"refresh_token": "r0"}, f)
        os.chmod(token_file_path(client), 0o600)
        provider.refresh.add("r0")
        provider.active_tokens["at1"] = mb.user
        p = client.fetch("-v", check=0)
        assert "C: AUTH OAUTHBEARER" in p.err, p.err
        assert provider.introspected == ["at1"]
        assert len(read_maildir(str(tmp_path / "Mail"))) == 2 and mb.count() == 0
        mb.deliver(make_message(3))
        p = client.fetch("-v", "--auth", "xoauth2", check=0)
        assert "C: AUTH XOAUTH2" in p.err, p.err
        assert mb.count() == 0
        # the provider revokes the token: Dovecot refuses it
        del provider.active_tokens["at1"]
        mb.deliver(make_message(4))
        p = client.fetch()
        assert p.returncode == 77, p.err
        assert mb.count() == 1
    finally:
        d.cleanup()
