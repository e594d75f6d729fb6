"""A small scripted POP3 server for cases a real server will not produce:
no CAPA, no UIDL, only plaintext mechanisms, STLS stripped, hostile replies,
SCRAM with any iteration count, sizes and bodies of any length.
It records every command line it receives (and every SASL response), so a
test can prove that a password or a SCRAM proof was never sent."""

import base64
import hashlib
import hmac
import os
import socket
import threading

from fetch_env import RUNAWAY_SEC


class FakePop3:
    def __init__(self, messages=(), capa=("USER", "UIDL", "TOP"), uidl=True,
                 greeting="+OK fake ready", stls_reply=None, retr_hook=None,
                 pass_reply="+OK logged in", tls_context=None, stls_context=None,
                 stls_inject=b"", uidl_fn=None, nagle=False, line_writes=False,
                 password="pw", scram_iterations=4096, list_fn=None):
        self.messages = [bytes(m) for m in messages]
        self.deleted = set()
        self.capa = capa          # None: CAPA answered with -ERR
        self.uidl = uidl
        self.greeting = greeting
        self.stls_reply = stls_reply
        self.retr_hook = retr_hook
        self.pass_reply = pass_reply
        self.tls_context = tls_context
        self.stls_context = stls_context    # STLS upgrades with this context
        self.stls_inject = stls_inject      # bytes sent right after +OK to STLS
        self.received = []
        self.token = "tok-123"
        self.oauth_challenge = False   # refuse a token with RFC 7628's JSON challenge
        self.oauth_mechs = []          # the OAuth mechanisms tried, in order
        self.auth_payload = b""
        self.uidl_fn = uidl_fn or (lambda i: "uid-%d" % i)
        # AUTH SCRAM-SHA-256 and APOP check this password (APOP needs a
        # <timestamp> in the greeting); the SCRAM exchange asks the client
        # for scram_iterations (i=), whatever that is.
        self.password = password
        self.scram_iterations = scram_iterations
        # list_fn(i) -> the size LIST announces for message i (default: its
        # wire size)
        self.list_fn = list_fn
        # Replies leave at once (TCP_NODELAY), as from a server that writes
        # each reply whole: the tests must not depend on delayed ACKs.
        # nagle=True keeps Nagle's algorithm on, and line_writes=True writes
        # every reply line by line, like a stdio server that flushes often
        # (popa3d): a client that does not answer promptly stalls 40 ms on
        # the delayed ACK each time.
        self.nagle = nagle
        self.line_writes = line_writes
        # sessions ended so far (wait_sessions): the client may exit before
        # this thread has read the last line it sent
        self.sessions_done = 0
        self.done_cv = threading.Condition()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def wait_sessions(self, n, timeout=30):
        """Wait until n sessions have ended (runaway guard: timeout)."""
        with self.done_cv:
            return self.done_cv.wait_for(lambda: self.sessions_done >= n, timeout)

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                # a runaway guard: a client that stops talking is the test's
                # failure to report, never a reason to end its session
                conn.settimeout(RUNAWAY_SEC)
                if not self.nagle:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls_context is not None:
                    conn = self.tls_context.wrap_socket(conn, server_side=True)
                self._session(conn)
            except OSError:
                pass
            finally:
                conn.close()
                with self.done_cv:
                    self.sessions_done += 1
                    self.done_cv.notify_all()

    @staticmethod
    def wire(msg):
        lines = msg.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        out = []
        for ln in lines:
            out.append((b"." + ln if ln.startswith(b".") else ln) + b"\r\n")
        return b"".join(out)

    def _session(self, conn):
        f = conn.makefile("rb")

        def send(data):
            if not self.line_writes:
                return conn.sendall(data)
            for ln in data.splitlines(keepends=True):
                conn.sendall(ln)
        send(self.greeting.encode() + b"\r\n")
        pending_delete = set()
        while True:
            line = f.readline(1024)
            if not line:
                return
            text = line.rstrip(b"\r\n").decode(errors="replace")
            self.received.append(text)
            cmd, _, arg = text.partition(" ")
            cmd = cmd.upper()
            live = [i for i in range(len(self.messages)) if i not in self.deleted]
            if cmd == "CAPA":
                if self.capa is None:
                    send(b"-ERR unknown command\r\n")
                else:
                    send(b"+OK\r\n" + b"".join(c.encode() + b"\r\n" for c in self.capa) + b".\r\n")
            elif cmd == "STLS" and self.stls_context == "silent":
                send(b"+OK begin TLS\r\n")
                while conn.recv(4096):   # swallow the ClientHello, answer nothing
                    pass
                return
            elif cmd == "STLS" and self.stls_context is not None:
                send(b"+OK begin TLS\r\n" + self.stls_inject)
                conn = self.stls_context.wrap_socket(conn, server_side=True)
                f = conn.makefile("rb")
            elif cmd == "STLS":
                send((self.stls_reply or "-ERR no TLS here").encode() + b"\r\n")
            elif cmd == "USER":
                send(b"+OK\r\n")
            elif cmd == "PASS":
                send(self.pass_reply.encode() + b"\r\n")
            elif cmd == "AUTH" and arg.upper().startswith(("XOAUTH2 ", "OAUTHBEARER ")):
                import base64
                mech, _, ir = arg.partition(" ")
                self.auth_payload = base64.b64decode(ir)
                ok = b"auth=Bearer " + self.token.encode() + b"\x01\x01" in self.auth_payload
                self.oauth_mechs.append(mech.upper())
                if not ok and self.oauth_challenge:
                    # RFC 7628 §3.2.2: the error as a JSON challenge, which
                    # the client answers with %x01 before the -ERR
                    send(b"+ " + base64.b64encode(b'{"status":"invalid_token",'
                                                  b'"schemes":"bearer"}') + b"\r\n")
                    self.received.append(f.readline(1024).rstrip(b"\r\n").decode())
                send(b"+OK welcome\r\n" if ok else b"-ERR [AUTH] bad token\r\n")
            elif cmd == "AUTH" and arg.upper().startswith("SCRAM-SHA-256 "):
                if not self._scram(f, send, arg.partition(" ")[2]):
                    return
            elif cmd == "AUTH":
                send(b"-ERR no\r\n")
            elif cmd == "APOP":
                user, _, digest = arg.partition(" ")
                stamp = self.greeting[self.greeting.find("<"):self.greeting.rfind(">") + 1]
                want = hashlib.md5((stamp + self.password).encode()).hexdigest()
                ok = "<" in self.greeting and hmac.compare_digest(digest, want)
                send(b"+OK welcome\r\n" if ok else b"-ERR [AUTH] no\r\n")
            elif cmd == "STAT":
                send(b"+OK %d %d\r\n" % (len(live), sum(len(self.wire(self.messages[i])) for i in live)))
            elif cmd == "LIST":
                size = self.list_fn or (lambda i: len(self.wire(self.messages[i])))
                send(b"+OK\r\n" + b"".join(b"%d %d\r\n" % (n + 1, size(i))
                                            for n, i in enumerate(live)) + b".\r\n")
            elif cmd == "UIDL" and self.uidl:
                send(b"+OK\r\n" + b"".join(b"%d %s\r\n" % (n + 1, self.uidl_fn(i).encode())
                                            for n, i in enumerate(live)) + b".\r\n")
            elif cmd == "RETR":
                i = live[int(arg) - 1]
                # retr_hook(conn, i): a false value lets the server answer,
                # "answered" means the hook did and the session goes on,
                # anything else true ends the session
                hooked = self.retr_hook(conn, i) if self.retr_hook is not None else None
                if hooked == "answered":
                    continue
                if hooked:
                    return
                send(b"+OK\r\n" + self.wire(self.messages[i]) + b".\r\n")
            elif cmd == "DELE":
                pending_delete.add(live[int(arg) - 1])
                send(b"+OK\r\n")
            elif cmd == "QUIT":
                self.deleted |= pending_delete
                send(b"+OK bye\r\n")
                return
            else:
                send(b"-ERR unknown command\r\n")

    def _scram(self, f, send, initial):
        """SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, with the count
        self.scram_iterations. False when the connection ended."""
        def b64(b):
            return base64.b64encode(b).decode()

        def response():
            line = f.readline(16384)
            if not line:
                return None
            text = line.rstrip(b"\r\n").decode(errors="replace")
            self.received.append(text)
            return text
        if initial == "=":
            initial = ""
        client_first = base64.b64decode(initial).decode()
        gs2, _, bare = client_first.partition(",,")
        attrs = dict(a.split("=", 1) for a in bare.split(","))
        nonce = attrs["r"] + b64(os.urandom(12))
        salt = os.urandom(16)
        server_first = "r=%s,s=%s,i=%d" % (nonce, b64(salt), self.scram_iterations)
        send(b"+ " + b64(server_first.encode()).encode() + b"\r\n")
        answer = response()
        if answer is None:
            return False
        if answer == "*":
            send(b"-ERR [AUTH] cancelled\r\n")
            return True
        client_final = base64.b64decode(answer).decode()
        without_proof, _, proof = client_final.rpartition(",p=")
        auth_message = ",".join((bare, server_first, without_proof)).encode()
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt,
                                     self.scram_iterations)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        signature = hmac.new(stored_key, auth_message, "sha256").digest()
        given = base64.b64decode(proof)
        if bytes(a ^ b for a, b in zip(given, signature)) != client_key:
            send(b"-ERR [AUTH] bad proof\r\n")
            return True
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        verifier = hmac.new(server_key, auth_message, "sha256").digest()
        send(b"+ " + b64(("v=" + b64(verifier)).encode()).encode() + b"\r\n")
        if response() is None:
            return False
        send(b"+OK logged in\r\n")
        return True
