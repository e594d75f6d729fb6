/* Counters for the metrics endpoint (metrics_listen; docs/DESIGN.md
 * "Metrics").
 *
 * One table in shared memory, made by the master before it forks: a row
 * per worker slot, one for the auth process and one for the master. Each
 * process adds only to its own row (relaxed atomic adds: a worker's store
 * thread and the auth process's pool threads share the row with their
 * loop); the metrics process reads every row and prints the sums. Counters
 * survive a child's restart (the row stays); a worker clears its own
 * gauges (sessions by state) when it starts, since the sessions of its
 * previous incarnation are gone. */
#ifndef POPBOX_METRICS_H
#define POPBOX_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

enum metrics_refusal {
	METRICS_REFUSED_MAX_CONNECTIONS,
	METRICS_REFUSED_MAX_CONNECTIONS_PER_IP,
	METRICS_REFUSED_PROXY,          /* untrusted source or a bad PROXY header */
	METRICS_REFUSED_N
};

enum metrics_state {
	METRICS_STATE_AUTHORIZATION,    /* also waiting for the auth process, SASL */
	METRICS_STATE_TRANSACTION,      /* also opening the maildrop */
	METRICS_STATE_UPDATE,
	METRICS_STATE_N
};

enum metrics_mech {
	METRICS_MECH_USER, METRICS_MECH_APOP, METRICS_MECH_PLAIN, METRICS_MECH_LOGIN,
	METRICS_MECH_CRAM_MD5, METRICS_MECH_SCRAM_SHA_1, METRICS_MECH_SCRAM_SHA_1_PLUS,
	METRICS_MECH_SCRAM_SHA_256, METRICS_MECH_SCRAM_SHA_256_PLUS, METRICS_MECH_OTHER,
	METRICS_MECH_N
};

enum metrics_login {
	METRICS_LOGIN_OK,        /* logged in, maildrop open */
	METRICS_LOGIN_FAIL,      /* wrong credentials */
	METRICS_LOGIN_TEMP,      /* auth process unavailable */
	METRICS_LOGIN_IN_USE,    /* right credentials, maildrop locked */
	METRICS_LOGIN_ERROR,     /* right credentials, maildrop unavailable or too large */
	METRICS_LOGIN_N
};

/* Commands by verb: the POP3 command table's names, then "unknown". */
#define METRICS_COMMANDS "CAPA", "USER", "PASS", "APOP", "STLS", "AUTH", "QUIT", "STAT", \
	"LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET"
#define METRICS_COMMAND_N 16

/* Upper bounds (seconds) of the auth latency histogram's buckets; +Inf
 * follows. */
#define METRICS_LATENCY_BOUNDS 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, \
	2.5, 5.0, 10.0
#define METRICS_LATENCY_N 14   /* the bounds and +Inf */

/* LMTP deliveries, one per recipient, by enum delivery_status
 * (store_deliver.h). */
#define METRICS_DELIVERY_N 5

/* Where a worker's maildrop open ran (docs/DESIGN.md "Quick opens on the
 * loop"). */
enum metrics_open {
	METRICS_OPEN_LOOP,       /* on the worker's loop, from popbox.index alone */
	METRICS_OPEN_THREAD,     /* on the store thread */
	METRICS_OPEN_N
};

enum metrics_role { METRICS_ROLE_WORKER, METRICS_ROLE_AUTH, METRICS_ROLE_METRICS, METRICS_ROLE_N };

struct metrics_row {
	uint64_t accepted;
	uint64_t refused[METRICS_REFUSED_N];
	int64_t sessions[METRICS_STATE_N];
	uint64_t logins[METRICS_MECH_N][METRICS_LOGIN_N];
	uint64_t commands[METRICS_COMMAND_N];
	uint64_t retrieved, deleted, bytes_sent;
	uint64_t tls_handshakes, tls_resumed, tls_failed;
	uint64_t auth_latency[METRICS_LATENCY_N];   /* per bucket, not cumulative */
	uint64_t auth_latency_count, auth_latency_sum_us;
	uint64_t penalties;                          /* auth answers held back */
	uint64_t restarts[METRICS_ROLE_N];           /* master row */
	uint64_t lmtp_deliveries[METRICS_DELIVERY_N]; /* by enum delivery_status */
	/* maildrop opens by where they ran (enum metrics_open), and quick
	 * opens on the loop that needed more than the index */
	uint64_t maildrop_opens[METRICS_OPEN_N];
	uint64_t maildrop_quick_fallbacks;
};

struct metrics;

/* The table, for n_workers worker rows; NULL when shared memory cannot be
 * had (then nothing is counted). */
struct metrics *metrics_new(unsigned n_workers);
/* Rows: worker slot i, METRICS_ROW_AUTH, METRICS_ROW_MASTER. */
#define METRICS_ROW_AUTH (-1)
#define METRICS_ROW_MASTER (-2)
/* This process adds to that row from now on (after fork). */
void metrics_attach(struct metrics *m, int row);
/* Stop counting and unmap the table (a per-user session process, which
 * must not be able to write other processes' counters). */
void metrics_detach(struct metrics *m);
/* A worker at start: its gauges read zero. */
void metrics_clear_gauges(void);

/* A user's session process (docs/DESIGN.md "A process per user session",
 * Metrics) must not be able to write the table other processes count in.
 * It counts into a row of its own instead: a page of shared memory that
 * the master makes before the fork and that only the master and that one
 * process map (every other child unmaps it after its fork). The master
 * folds what the process counted into its own row of the table: at each
 * end of a session there, every METRICS_FOLD_SECONDS while it runs, and
 * when it has gone. Only the fields a session process counts are folded
 * (sessions, logins, commands, messages, octets); a counter that goes
 * down is ignored and a gauge is clamped to the process's open sessions,
 * so a session process can make its own sessions' numbers wrong but no
 * other's. */
#define METRICS_FOLD_SECONDS 1
/* A zeroed row in shared memory; NULL (errno) when none can be had. */
struct metrics_row *metrics_block_new(void);
void metrics_block_free(struct metrics_row *b);
/* A session process: count into b from now on (NULL: count nothing). */
void metrics_attach_block(struct metrics_row *b);
/* The master: add what b counted since seen (the master's private copy of
 * what it folded before) to this process's row; gauges at most
 * max_sessions each. */
void metrics_block_fold(const struct metrics_row *b, struct metrics_row *seen,
    unsigned max_sessions);
/* The master: the process of seen is gone, and its sessions with it. */
void metrics_block_gone(struct metrics_row *seen);

/* This process's row, NULL when not attached. */
extern struct metrics_row *metrics_self;

#define METRICS_ADD(field, n) do { \
	if (metrics_self != NULL) \
		__atomic_fetch_add(&metrics_self->field, (n), __ATOMIC_RELAXED); \
} while (0)
#define METRICS_INC(field) METRICS_ADD(field, 1)

/* Monotonic microseconds (latencies). */
static inline uint64_t
monotonic_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

enum metrics_mech metrics_mech(const char *name);
/* "USER", "APOP", "SCRAM-SHA-256", ... ("other" for the rest). */
const char *metrics_mech_name(int mech);
/* name: a POP3 command (any case, not NUL-terminated, len octets). */
void metrics_command(const char *name, size_t len);
void metrics_auth_latency(uint64_t usec);

/* The text of every metric, the sums over all rows: the Prometheus text
 * format 0.0.4, or OpenMetrics 1.0 when openmetrics. Returns its length;
 * *out is malloc'd. */
size_t metrics_format(const struct metrics *m, bool openmetrics, char **out);

#endif
