"""Helpers for the TLS and SASL integration tests (issue 3): a throw-away
PKI made with the openssl command, TLS-wrapped raw POP3 connections, the TLS
1.3 exporter for channel binding, and a small SCRAM client.

No tests live here; test_server_tls.py and test_server_sasl.py import it.
"""

import base64
import ctypes
import hashlib
import hmac
import os
import secrets
import select
import socket
import ssl
import subprocess

from popbox_server import RUNAWAY_SEC, POP3Raw, free_port, fresh_source

CMD_TIMEOUT = RUNAWAY_SEC     # external commands: a runaway guard (runaway.py)


# ------------------------------------------------------------------ PKI

def _openssl(*args, cwd):
    r = subprocess.run(("openssl",) + args, cwd=cwd, capture_output=True, timeout=CMD_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stderr.decode(errors="replace")))
    return r.stdout


class PKI:
    """A test CA and server certificates for DNS:localhost and IP:127.0.0.1,
    all in one directory (owned by the test runner; popboxd's master reads
    them before dropping privileges)."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.ca_key = self.path("ca.key")
        self.ca_cert = self.path("ca.pem")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", self.ca_key, "-out", self.ca_cert, "-days", "2", "-subj", "/CN=popbox test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        # Two server certificates with different keys: the reload test swaps them.
        self.server = [self.make_server("server1"), self.make_server("server2")]

    def path(self, name):
        return os.path.join(self.dir, name)

    def make_server(self, name):
        key, csr, cert = self.path(name + ".key"), self.path(name + ".csr"), self.path(name + ".pem")
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                    "basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", key, "-out", csr, "-subj", "/CN=localhost", cwd=self.dir)
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
                 "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert, cwd=self.dir)
        os.chmod(key, 0o600)
        with open(cert, "rb") as f:
            pem = f.read()
        with open(key, "rb") as f:
            keypem = f.read()
        return {"cert": cert, "key": key, "cert_pem": pem, "key_pem": keypem,
                "fingerprint": pem_fingerprint(pem)}


def pem_fingerprint(pem):
    der = ssl.PEM_cert_to_DER_cert(pem.decode() if isinstance(pem, bytes) else pem)
    return hashlib.sha256(der).hexdigest()


def install_cert(srv, which, cert_name="tls_cert.pem", key_name="tls_key.pem", key_mode=0o600):
    """Copy certificate `which` (a PKI.server entry) into srv's tree and point
    the configuration at the copies (so a test may replace them)."""
    cert = os.path.join(srv.base, cert_name)
    key = os.path.join(srv.base, key_name)
    srv.write_file(cert, which["cert_pem"], mode=0o644, own=False)
    srv.write_file(key, which["key_pem"], mode=key_mode, own=False)
    srv.config["tls_cert"] = cert
    srv.config["tls_key"] = key
    return cert, key


def tls_server(server_factory, pki, config=None, users=None, start=True, which=0, tls_port=True):
    """A PopboxServer with tls_cert/tls_key (server certificate `which`) and,
    unless tls_port is False, an implicit-TLS listener (srv.tls_port)."""
    srv = server_factory(users=users, config=config, start=False)
    install_cert(srv, pki.server[which])
    srv.tls_port = None
    if tls_port:
        srv.tls_port = free_port()
        srv.config["listen_tls"] = "127.0.0.1:%d" % srv.tls_port
    if start:
        srv.start()
    return srv


# ------------------------------------------------------------------ TLS clients

def client_context(pki, min_version=None, max_version=None, alpn=None):
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_connect(srv, pki, source="fresh", ctx=None, hostname="localhost", strict_eof=False, **kw):
    """A POP3Raw over implicit TLS to srv.tls_port; greeting in .greeting.
    strict_eof: a TCP close without close_notify raises SSLError."""
    if source == "fresh":
        source = fresh_source()
    c = POP3Raw(srv.tls_port, "127.0.0.1", read_greeting=False, source=source)
    c.sock = (ctx or client_context(pki, **kw)).wrap_socket(
        c.sock, server_hostname=hostname, suppress_ragged_eofs=not strict_eof)
    c.greeting = c.readline().rstrip(b"\r\n")
    return c


def starttls(c, pki, ctx=None, hostname="localhost", strict_eof=False, **kw):
    """Send STLS on a plain POP3Raw and do the handshake; asserts the server
    sent nothing after its +OK before the handshake."""
    st = c.cmd("STLS")
    assert st.startswith(b"+OK"), st
    assert not c.buf, "bytes after the STLS answer before the handshake: %r" % bytes(c.buf)
    c.sock = (ctx or client_context(pki, **kw)).wrap_socket(
        c.sock, server_hostname=hostname, suppress_ragged_eofs=not strict_eof)
    return c


def plain_connect_stls(srv, pki, source="fresh", **kw):
    c = srv.connect(source=source)
    return starttls(c, pki, **kw)


def served_fingerprint(sock):
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def readable_within(sock, seconds):
    r, _, _ = select.select([sock], [], [], seconds)
    return bool(r)


# Python's ssl module has no RFC 5705 exporter; call OpenSSL's through ctypes
# on the SSL* inside the _ssl object (CPython's PySSLSocket: PyObject_HEAD,
# a weakref to the socket, then SSL *ssl). The pointer is checked with
# SSL_get_version against what Python reports before it is used.
_SSL_PTR_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p) + ctypes.sizeof(ctypes.c_void_p)


def _libssl():
    lib = ctypes.CDLL("libssl.so.3")
    lib.SSL_get_version.argtypes = [ctypes.c_void_p]
    lib.SSL_get_version.restype = ctypes.c_char_p
    lib.SSL_export_keying_material.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    lib.SSL_export_keying_material.restype = ctypes.c_int
    return lib


def tls_exporter(sslsock, length=32, label=b"EXPORTER-Channel-Binding"):
    """RFC 9266 tls-exporter channel binding data of sslsock, or raises
    RuntimeError when it cannot be had from this Python."""
    if "OpenSSL 3" not in ssl.OPENSSL_VERSION:
        raise RuntimeError("Python's ssl is not linked with OpenSSL 3 (%s)" % ssl.OPENSSL_VERSION)
    try:
        lib = _libssl()
    except OSError as e:
        raise RuntimeError("libssl.so.3 not loadable: %s" % e)
    obj = sslsock._sslobj
    ptr = ctypes.c_void_p.from_address(id(obj) + _SSL_PTR_OFFSET).value
    if not ptr:
        raise RuntimeError("no SSL pointer found in the _ssl object")
    v = lib.SSL_get_version(ptr)
    if v is None or v.decode() != sslsock.version():
        raise RuntimeError("SSL pointer check failed (%r vs %r)" % (v, sslsock.version()))
    out = ctypes.create_string_buffer(length)
    if lib.SSL_export_keying_material(ptr, out, length, label, len(label), None, 0, 0) != 1:
        raise RuntimeError("SSL_export_keying_material failed")
    return out.raw


# ------------------------------------------------------------------ SASL

def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(line):
    if isinstance(line, bytes):
        line = line.decode()
    return base64.b64decode(line, validate=True)


def scram_secret(password, hashname="sha256", iterations=4096, salt=None):
    """A Dovecot {SCRAM-SHA-256} users-file field: iter,salt,stored,server
    (base64 fields, as `doveadm pw -s SCRAM-SHA-256` prints)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(hashname, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashname).digest()
    stored = hashlib.new(hashname, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashname).digest()
    scheme = {"sha256": "SCRAM-SHA-256", "sha1": "SCRAM-SHA-1"}[hashname]
    return "{%s}%d,%s,%s,%s" % (scheme, iterations, b64(salt), b64(stored), b64(server_key))


class ScramClient:
    """RFC 5802/7677 SCRAM client (ASCII user names and passwords, so
    SASLprep is the identity), optionally with tls-exporter channel binding."""

    def __init__(self, user, password, hashname="sha256", cb_data=None, cb_type="tls-exporter",
                 gs2_flag=None):
        self.user = user
        self.password = password
        self.hashname = hashname
        self.cb_data = cb_data
        if gs2_flag is None:
            gs2_flag = "p=" + cb_type if cb_data is not None else "n"
        self.gs2 = gs2_flag + ",,"
        self.nonce = b64(secrets.token_bytes(18))
        self.server_signature = None

    def _h(self, data):
        return hashlib.new(self.hashname, data).digest()

    def _hmac(self, key, data):
        return hmac.new(key, data, self.hashname).digest()

    def first(self):
        name = self.user.replace("=", "=3D").replace(",", "=2C")
        self.bare = "n=%s,r=%s" % (name, self.nonce)
        return self.gs2 + self.bare

    def final(self, server_first, corrupt_proof=False, cb_override=None):
        if isinstance(server_first, bytes):
            server_first = server_first.decode()
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        assert attrs["r"].startswith(self.nonce) and len(attrs["r"]) > len(self.nonce), server_first
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        salted = hashlib.pbkdf2_hmac(self.hashname, self.password.encode(), salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored = self._h(client_key)
        cb = self.cb_data if cb_override is None else cb_override
        cbind = self.gs2.encode() + (cb or b"")
        without_proof = "c=%s,r=%s" % (b64(cbind), attrs["r"])
        auth_message = ",".join((self.bare, server_first, without_proof)).encode()
        sig = self._hmac(stored, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        if corrupt_proof:
            proof = bytes([proof[0] ^ 1]) + proof[1:]
        server_key = self._hmac(salted, b"Server Key")
        self.server_signature = self._hmac(server_key, auth_message)
        return without_proof + ",p=" + b64(proof)

    def verify(self, server_final):
        if isinstance(server_final, bytes):
            server_final = server_final.decode()
        assert server_final.startswith("v="), server_final
        return base64.b64decode(server_final[2:]) == self.server_signature


def scram_login(c, user, password, mech="SCRAM-SHA-256", cb_data=None, initial=True,
                corrupt_proof=False, cb_override=None, gs2_flag=None):
    """Run AUTH SCRAM-* on POP3Raw c. Returns (final status line, scram client,
    list of every server line seen). The server signature is checked when
    the server sends one."""
    hashname = "sha1" if mech.startswith("SCRAM-SHA-1") else "sha256"
    sc = ScramClient(user, password, hashname, cb_data=cb_data, gs2_flag=gs2_flag)
    seen = []
    if initial:
        st = c.cmd("AUTH %s %s" % (mech, b64(sc.first())))
    else:
        st = c.cmd("AUTH %s" % mech)
        seen.append(st)
        assert st == b"+ " or st == b"+", st
        st = c.cmd(b64(sc.first()))
    seen.append(st)
    if not st.startswith(b"+ "):
        return st, sc, seen
    st = c.cmd(b64(sc.final(unb64(st[2:]), corrupt_proof=corrupt_proof, cb_override=cb_override)))
    seen.append(st)
    if st.startswith(b"+ "):
        assert sc.verify(unb64(st[2:])), "server signature does not verify: %r" % st
        st = c.cmd(b"")
        seen.append(st)
    return st, sc, seen
