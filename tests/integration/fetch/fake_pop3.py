"""A small scripted POP3 server for cases a real server will not produce:
no CAPA, no UIDL, only plaintext mechanisms, STLS stripped, hostile replies.
It records every command line it receives, so a test can prove that a
password was never sent."""

import socket
import threading

from fetch_env import RUNAWAY_SEC


class FakePop3:
    def __init__(self, messages=(), capa=("USER", "UIDL", "TOP"), uidl=True,
                 greeting="+OK fake ready", stls_reply=None, retr_hook=None,
                 pass_reply="+OK logged in", tls_context=None, stls_context=None,
                 stls_inject=b"", uidl_fn=None, nagle=False, line_writes=False):
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
        self.auth_payload = b""
        self.uidl_fn = uidl_fn or (lambda i: "uid-%d" % i)
        # Replies leave at once (TCP_NODELAY), as from a server that writes
        # each reply whole: the tests must not depend on delayed ACKs.
        # nagle=True keeps Nagle's algorithm on, and line_writes=True writes
        # every reply line by line, like a stdio server that flushes often
        # (popa3d): a client that does not answer promptly stalls 40 ms on
        # the delayed ACK each time.
        self.nagle = nagle
        self.line_writes = line_writes
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

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
                send(b"+OK welcome\r\n" if ok else b"-ERR [AUTH] bad token\r\n")
            elif cmd == "AUTH":
                send(b"-ERR no\r\n")
            elif cmd == "STAT":
                send(b"+OK %d %d\r\n" % (len(live), sum(len(self.wire(self.messages[i])) for i in live)))
            elif cmd == "LIST":
                send(b"+OK\r\n" + b"".join(b"%d %d\r\n" % (n + 1, len(self.wire(self.messages[i])))
                                            for n, i in enumerate(live)) + b".\r\n")
            elif cmd == "UIDL" and self.uidl:
                send(b"+OK\r\n" + b"".join(b"%d %s\r\n" % (n + 1, self.uidl_fn(i).encode())
                                            for n, i in enumerate(live)) + b".\r\n")
            elif cmd == "RETR":
                i = live[int(arg) - 1]
                if self.retr_hook is not None and self.retr_hook(conn, i):
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
