#!/usr/bin/python3
"""Write the seed corpus of fuzz_ipc (tests/fuzz/corpus/ipc/): one valid
message of every type in the encoding that src/server/ipc.h describes
(header: uint32 type, uint32 nfields, uint64 id; then numbers as uint64 and
texts NUL-terminated, all in host byte order), plus a few that a decoder must
refuse. Run from the top of the tree: python3 tests/fuzz/ipc_corpus.py"""
import os
import struct

# enum ipc_type
AUTH_PASS, AUTH_APOP, AUTH_RESULT, RELOAD, SASL_START, SASL_STEP, SASL_ABORT, \
    USERS_OPEN, USERS_FD, PING, PONG, RCPT_LOOKUP, SESSION_GRANT, HANDOVER, HANDOVER_DONE, \
    USERS_POLICY, SESSION_ADOPT, SESSION_END, LMTP_DELIVER, LMTP_RESULT = range(1, 21)
TICKET = "0123456789abcdef0123456789abcdef"
# enum auth_result
OK, FAIL, TEMP, CONTINUE = range(4)


def msg(type_, req_id, *fields):
    body = b""
    for f in fields:
        body += struct.pack("=Q", f) if isinstance(f, int) else f.encode() + b"\0"
    return struct.pack("=IIQ", type_, len(fields), req_id) + body


SEEDS = {
    "auth_pass": msg(AUTH_PASS, 0x5eed, 0x0100000000000001, "alice", "secret", "127.0.0.1"),
    "auth_apop": msg(AUTH_APOP, 2, 3, "alice", "<123.4567@host>",
                     "0123456789abcdef0123456789abcdef", "::1"),
    "auth_result_ok": msg(AUTH_RESULT, 4, OK, "alice", "maildir:/home/alice/Maildir", "", 0, "",
                          "", 0, 0),
    "auth_result_device": msg(AUTH_RESULT, 4, OK, "alice", "maildir:/home/alice/Maildir", "", 0,
                              "#phone", "", 9, 301),
    "auth_result_ticket": msg(AUTH_RESULT, 4, OK, "alice", "mbox:/var/mail/alice", "", 0, "",
                              TICKET, 0, 0),
    "auth_result_dovecot": msg(AUTH_RESULT, 4, OK, "bob", "maildir:/home/bob/Maildir", "",
                               2, "", "", 0, 0),
    "auth_result_continue": msg(AUTH_RESULT, 5, CONTINUE, "", "", "cj1mb28scz1iYXIsaT00MDk2",
                                0, "", "", 0, 0),
    "auth_result_fail": msg(AUTH_RESULT, 6, FAIL, "", "", "", 0, "", "", 0, 0),
    "auth_result_temp": msg(AUTH_RESULT, 7, TEMP, "", "", "", 0, "", "", 0, 0),
    "reload": msg(RELOAD, 0, "/etc/popboxd.conf", "users = /etc/popbox/users\n", "", ""),
    "sasl_start": msg(SASL_START, 8, 9, "SCRAM-SHA-256-PLUS", 1, "", "192.0.2.7",
                      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", ""),
    "sasl_step": msg(SASL_STEP, 8, 9, "Yml3cz0sYz1iaXdzLHI9Zm9v"),
    "sasl_abort": msg(SASL_ABORT, 8, 9),
    "users_open": msg(USERS_OPEN, 1700000000),
    "users_fd_ok": msg(USERS_FD, 1700000000, ""),
    "users_fd_error": msg(USERS_FD, 1700000000, "/etc/popbox/users: Permission denied"),
    "ping": msg(PING, 42),
    "pong": msg(PONG, 42),
    "pong_ready": msg(PONG, 0),
    "rcpt_lookup": msg(RCPT_LOOKUP, 10, 11, "alice+list@example.org"),
    "bad_ping_field": msg(PING, 42, 1),
    "session_grant": msg(SESSION_GRANT, 0, 1, 0x0100000000000001, 1001, 1001, TICKET, "alice",
                         "mbox:/var/mail/alice", 0, 2 + 30, 1 + 300),
    "handover": msg(HANDOVER, 11, 0x0100000000000001, 3, 2, TICKET, "[::1]:40000", "::1",
                    "#phone", "U1RBVA0KTElTVA0K"),
    "handover_done": msg(HANDOVER_DONE, 11, 0x0100000000000001, 1),
    "session_adopt": msg(SESSION_ADOPT, 0, 0x0100000000000001, 1, 0, "[::1]:40000", "::1", "",
                         "U1RBVA0K"),
    "session_end": msg(SESSION_END, 0, 0x0100000000000001),
    "bad_grant_slot": msg(SESSION_GRANT, 0, 64, 1, 1001, 1001, TICKET, "a", "maildir:/a", 0, 0,
                          0),
    "bad_handover_flags": msg(HANDOVER, 11, 1, 4, 0, TICKET, "h:1", "h", "", ""),
    # a mechanism past enum metrics_mech (METRICS_MECH_N = 10)
    "bad_handover_mech": msg(HANDOVER, 11, 1, 0, 10, TICKET, "h:1", "h", "", ""),
    # refused: result past the enum, flag 2, one field short, trailing octet
    "bad_result_enum": msg(AUTH_RESULT, 4, 4, "", "", "", 0, "", "", 0, 0),
    "bad_uidl_format": msg(AUTH_RESULT, 4, OK, "", "", "", 4, "", "", 0, 0),
    "bad_sasl_flag": msg(SASL_START, 8, 9, "PLAIN", 2, "", "", "", ""),
    "bad_count": msg(SASL_STEP, 8, 9),
    "users_policy": msg(USERS_POLICY, 0, 3),
    "bad_policy": msg(USERS_POLICY, 0, 4),
    "bad_trailing": msg(SASL_ABORT, 8, 9) + b"x",
    # LMTP as the recipient: a check (no descriptor), a delivery, results
    "lmtp_check": msg(LMTP_DELIVER, 12, 0x0200000000000001, 0, 4096, "alice", "bob@example.org"),
    "lmtp_deliver": msg(LMTP_DELIVER, 13, 0x0200000000000001, 1, 0, "alice", ""),
    "lmtp_result_ok": msg(LMTP_RESULT, 13, 0x0200000000000001, 0, ""),
    "lmtp_result_no_user": msg(LMTP_RESULT, 12, 0x0200000000000001, 5, "no such account"),
    # refused: a kind and a status past their ranges, an empty user
    "bad_lmtp_kind": msg(LMTP_DELIVER, 12, 1, 2, 0, "alice", ""),
    "bad_lmtp_status": msg(LMTP_RESULT, 12, 1, 6, ""),
    "bad_lmtp_user": msg(LMTP_DELIVER, 12, 1, 1, 0, "", ""),
}

if __name__ == "__main__":
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "ipc")
    os.makedirs(d, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
