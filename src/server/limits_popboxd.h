/* Size limits of popboxd that depend on each other, in one place, each
 * derived from the ones it must hold (docs/DESIGN.md, "Limits").
 *
 * The chain: the master reads the config file and the TLS PEM files at
 * start-up and on SIGHUP with the same reader and the same limits; on SIGHUP
 * it sends their text to every child in one IPC_RELOAD message (path, config
 * text, certificate PEM, key PEM), so the IPC message size is derived from
 * them, and the kernel must let one SOCK_SEQPACKET message of that size
 * through. A file that starts the server therefore also reloads.
 *
 * Named limits.h it would shadow the system header (-Isrc). */
#ifndef POPBOX_LIMITS_POPBOXD_H
#define POPBOX_LIMITS_POPBOXD_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* Open files: a logged-in session holds its socket, the maildrop lock,
 * new/ and cur/ (an mbox: its directory, the file and the lock), and while
 * RETR streams one a message file. The master raises the limit to what
 * max_connections needs per worker (master.c); a worker takes no new
 * connection while its sessions could use up what it has (worker.c). The
 * spare is the worker's own: listeners, the auth and control channels,
 * the event loop, the store threads' wake-ups, the log. */
#define POPBOXD_FDS_PER_SESSION 5
#define POPBOXD_FDS_SPARE 64

/* The config file: about twenty keys with short values; 128 KiB leaves room
 * for long comments and proxy_trusted lists, and keeps the reload message
 * (below) within what Linux passes by default. */
#define POPBOXD_CONFIG_MAX (128 * 1024)

/* One PEM file (tls_cert, tls_key): a certificate chain is a few KiB. */
#define POPBOXD_PEM_MAX (64 * 1024)

/* The config path in a reload message: open() takes no longer name
 * (PATH_MAX counts the NUL: one more is harmless). */
#define POPBOXD_CONFIG_PATH_MAX PATH_MAX

/* The users file is read whole into memory and entries point into it;
 * 1 GiB is millions of users, far beyond what a flat file should hold. It
 * never travels over IPC (the master hands over a descriptor). */
#define POPBOXD_USERS_FILE_MAX ((size_t)1024 * 1024 * 1024)

/* A user name: RFC 5321 allows 64 + 1 + 255 octets for an address. The
 * users file skips longer names (passwd.c) and IPC carries no longer one. */
#define POPBOXD_USER_MAX 320

/* A mail location: a path and its "type:" prefix (mail_location_expand in
 * passwd.c refuses longer ones; IPC_AUTH_RESULT carries it). */
#define POPBOXD_MAIL_LOCATION_MAX (PATH_MAX + 64)

/* The old server's UIDL list of one maildrop (dovecot-uidlist,
 * courierpop3dsizelist), read whole by uidl_migrate.c. It is written by
 * another program (and by the maildrop's owner): a line is about 60-120
 * octets, so 128 MiB holds the 1,000,000 messages a maildrop may have
 * (store_maildir.c) and bounds the allocation. A larger file is ignored
 * (logged): its messages get popbox UIDLs. */
#define POPBOXD_OLD_UIDLIST_MAX ((size_t)128 << 20)

/* The fixed header of every IPC message (struct ipc_header in ipc.c, which
 * checks the two agree). */
#define IPC_HEADER_SIZE 16

/* IPC_RELOAD: header, then four NUL-terminated texts; ipc.c's decoder holds
 * each to its limit. */
#define IPC_RELOAD_MSG_MAX (IPC_HEADER_SIZE + (POPBOXD_CONFIG_PATH_MAX + 1) + \
	(POPBOXD_CONFIG_MAX + 1) + 2 * (POPBOXD_PEM_MAX + 1))

/* The largest message of any type, and the receive buffers' size. The
 * reload message is the largest: worker <-> auth messages carry at most a
 * SASL line (IPC_MAX_SASL_DATA of base64, checked in ipc.h) and short names. */
#define IPC_MAX_MSG IPC_RELOAD_MSG_MAX

/* Linux refuses (EMSGSIZE) a SOCK_SEQPACKET message longer than the
 * sender's send buffer less 32 bytes of overhead. The default buffer
 * (net.core.wmem_default, 212992) is smaller than a reload message, so the
 * master raises SO_SNDBUF on its control sockets to IPC_SOCKET_SNDBUF; the
 * kernel doubles the value asked for and caps it at twice
 * net.core.wmem_max, whose default is also 212992. */
#define IPC_SEQPACKET_OVERHEAD 32
#define LINUX_DEFAULT_WMEM_MAX 212992
#define IPC_SOCKET_SNDBUF (IPC_MAX_MSG + IPC_SEQPACKET_OVERHEAD)

_Static_assert(IPC_MAX_MSG + IPC_SEQPACKET_OVERHEAD <= 2 * LINUX_DEFAULT_WMEM_MAX,
    "a reload message must pass a SOCK_SEQPACKET socket on a default Linux");
_Static_assert(IPC_MAX_MSG >= IPC_HEADER_SIZE + POPBOXD_CONFIG_PATH_MAX + 1 +
    POPBOXD_CONFIG_MAX + 1 + 2 * (POPBOXD_PEM_MAX + 1),
    "the reload message must carry the largest config and PEM files");
_Static_assert(POPBOXD_CONFIG_MAX < POPBOXD_USERS_FILE_MAX, "limits out of order");
_Static_assert(POPBOXD_USERS_FILE_MAX <= INT64_MAX / 2, "the users file limit must fit off_t");

#endif
