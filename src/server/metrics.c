/* The shared counter table and its text form (metrics.h). */
#include "server/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#include "common/log.h"
#include "common/util.h"
#include "server/popboxd.h"
#include "server/store_deliver.h"

struct metrics {
	unsigned n_rows;      /* workers, then auth, then master */
	unsigned n_workers;
	struct metrics_row rows[];
};

struct metrics_row *metrics_self;

static const char *const command_names[METRICS_COMMAND_N - 1] = { METRICS_COMMANDS };
static const double latency_bounds[METRICS_LATENCY_N - 1] = { METRICS_LATENCY_BOUNDS };
static const char *const mech_names[METRICS_MECH_N] = { "USER", "APOP", "PLAIN", "LOGIN",
	"CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS",
	"other" };
static const char *const login_names[METRICS_LOGIN_N] = { "ok", "fail", "temp", "in_use",
	"error" };
static const char *const state_names[METRICS_STATE_N] = { "authorization", "transaction",
	"update" };
static const char *const refusal_names[METRICS_REFUSED_N] = { "max_connections",
	"max_connections_per_ip", "proxy" };
static const char *const role_names[METRICS_ROLE_N] = { "worker", "auth", "metrics" };
static const char *const open_names[METRICS_OPEN_N] = { "loop", "thread" };
/* in the order of enum delivery_status */
static const char *const delivery_names[METRICS_DELIVERY_N] = { "delivered", "temp", "perm",
	"over_quota", "too_big" };

_Static_assert(N_ELEMENTS(command_names) == METRICS_COMMAND_N - 1, "METRICS_COMMAND_N");
_Static_assert(N_ELEMENTS(latency_bounds) == METRICS_LATENCY_N - 1, "METRICS_LATENCY_N");
_Static_assert(DELIVERY_TOO_BIG == METRICS_DELIVERY_N - 1 && DELIVERY_OK == 0,
    "delivery_names follows enum delivery_status");

struct metrics *
metrics_new(unsigned n_workers)
{
	unsigned n_rows = n_workers + 2;
	size_t size = sizeof(struct metrics) + n_rows * sizeof(struct metrics_row);
	struct metrics *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
	    -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	memset(m, 0, size);
	m->n_rows = n_rows;
	m->n_workers = n_workers;
	return m;
}

void
metrics_attach(struct metrics *m, int row)
{
	if (m == NULL) {
		metrics_self = NULL;
		return;
	}
	unsigned i = row == METRICS_ROW_AUTH ? m->n_workers : row == METRICS_ROW_MASTER ?
	    m->n_workers + 1 : (unsigned)row;
	metrics_self = i < m->n_rows ? &m->rows[i] : NULL;
}

void
metrics_clear_gauges(void)
{
	if (metrics_self == NULL)
		return;
	for (size_t i = 0; i < METRICS_STATE_N; i++)
		__atomic_store_n(&metrics_self->sessions[i], 0, __ATOMIC_RELAXED);
}

enum metrics_mech
metrics_mech(const char *name)
{
	for (size_t i = 0; i < METRICS_MECH_OTHER; i++)
		if (strcasecmp(name, mech_names[i]) == 0)
			return (enum metrics_mech)i;
	return METRICS_MECH_OTHER;
}

const char *
metrics_mech_name(int mech)
{
	return mech >= 0 && mech < METRICS_MECH_N ? mech_names[mech] : "other";
}

void
metrics_command(const char *name, size_t len)
{
	size_t i;
	for (i = 0; i < N_ELEMENTS(command_names); i++)
		if (strlen(command_names[i]) == len && strncasecmp(command_names[i], name, len) == 0)
			break;
	METRICS_INC(commands[i]);   /* i == METRICS_COMMAND_N - 1: unknown */
}

void
metrics_auth_latency(uint64_t usec)
{
	size_t i;
	for (i = 0; i < N_ELEMENTS(latency_bounds); i++)
		if ((double)usec <= latency_bounds[i] * 1e6)
			break;
	METRICS_INC(auth_latency[i]);
	METRICS_INC(auth_latency_count);
	METRICS_ADD(auth_latency_sum_us, usec);
}

/* The sum of one field over every row. */
#define SUM(m, field) ({ uint64_t s_ = 0; \
	for (unsigned r_ = 0; r_ < (m)->n_rows; r_++) \
		s_ += __atomic_load_n(&(m)->rows[r_].field, __ATOMIC_RELAXED); \
	s_; })

/* A family's HELP and TYPE lines. OpenMetrics names a counter family
 * without its _total suffix. */
static void
family(FILE *f, bool om, const char *name, const char *type, const char *help)
{
	size_t len = strlen(name);
	if (om && strcmp(type, "counter") == 0 && len > 6 && strcmp(name + len - 6, "_total") == 0)
		len -= 6;
	fprintf(f, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)len, name, help, (int)len, name, type);
}

size_t
metrics_format(const struct metrics *m, bool om, char **out)
{
	size_t len = 0;
	FILE *f = open_memstream(out, &len);
	if (f == NULL)
		fatal("open_memstream");

	family(f, om, "popbox_build_info", "gauge", "popboxd version (value 1).");
	fprintf(f, "popbox_build_info{version=\"%s\"} 1\n", POPBOXD_VERSION);

	family(f, om, "popbox_connections_accepted_total", "counter",
	    "Connections accepted by the workers (refused ones included).");
	fprintf(f, "popbox_connections_accepted_total %llu\n", (unsigned long long)SUM(m, accepted));

	family(f, om, "popbox_connections_refused_total", "counter",
	    "Connections closed at once, by reason.");
	for (size_t i = 0; i < METRICS_REFUSED_N; i++)
		fprintf(f, "popbox_connections_refused_total{reason=\"%s\"} %llu\n", refusal_names[i],
		    (unsigned long long)SUM(m, refused[i]));

	family(f, om, "popbox_sessions", "gauge", "Open POP3 sessions by state.");
	for (size_t i = 0; i < METRICS_STATE_N; i++) {
		int64_t v = (int64_t)SUM(m, sessions[i]);
		fprintf(f, "popbox_sessions{state=\"%s\"} %lld\n", state_names[i],
		    (long long)(v < 0 ? 0 : v));
	}

	family(f, om, "popbox_logins_total", "counter", "Login attempts by mechanism and result.");
	for (size_t i = 0; i < METRICS_MECH_N; i++)
		for (size_t j = 0; j < METRICS_LOGIN_N; j++)
			fprintf(f, "popbox_logins_total{mechanism=\"%s\",result=\"%s\"} %llu\n",
			    mech_names[i], login_names[j], (unsigned long long)SUM(m, logins[i][j]));

	family(f, om, "popbox_auth_penalties_total", "counter",
	    "Answers of the auth process held back by the failed-login penalty.");
	fprintf(f, "popbox_auth_penalties_total %llu\n", (unsigned long long)SUM(m, penalties));

	family(f, om, "popbox_auth_duration_seconds", "histogram",
	    "Time from a worker's request to the auth process's answer (penalty delays included).");
	uint64_t cum = 0;
	for (size_t i = 0; i < METRICS_LATENCY_N; i++) {
		cum += SUM(m, auth_latency[i]);
		if (i < N_ELEMENTS(latency_bounds))
			fprintf(f, "popbox_auth_duration_seconds_bucket{le=\"%g\"} %llu\n",
			    latency_bounds[i], (unsigned long long)cum);
		else
			fprintf(f, "popbox_auth_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
			    (unsigned long long)cum);
	}
	uint64_t sum_us = SUM(m, auth_latency_sum_us);
	fprintf(f, "popbox_auth_duration_seconds_sum %llu.%06llu\n",
	    (unsigned long long)(sum_us / 1000000), (unsigned long long)(sum_us % 1000000));
	/* the count is the +Inf bucket, read once, so the two agree */
	fprintf(f, "popbox_auth_duration_seconds_count %llu\n", (unsigned long long)cum);

	family(f, om, "popbox_commands_total", "counter", "POP3 commands received, by verb.");
	for (size_t i = 0; i < METRICS_COMMAND_N; i++)
		fprintf(f, "popbox_commands_total{command=\"%s\"} %llu\n",
		    i < N_ELEMENTS(command_names) ? command_names[i] : "unknown",
		    (unsigned long long)SUM(m, commands[i]));

	family(f, om, "popbox_messages_retrieved_total", "counter", "Messages sent by RETR.");
	fprintf(f, "popbox_messages_retrieved_total %llu\n", (unsigned long long)SUM(m, retrieved));
	family(f, om, "popbox_messages_deleted_total", "counter",
	    "Messages removed in the UPDATE state.");
	fprintf(f, "popbox_messages_deleted_total %llu\n", (unsigned long long)SUM(m, deleted));
	family(f, om, "popbox_sent_bytes_total", "counter",
	    "Octets sent to clients by sessions that have ended.");
	fprintf(f, "popbox_sent_bytes_total %llu\n", (unsigned long long)SUM(m, bytes_sent));

	family(f, om, "popbox_tls_handshakes_total", "counter", "Completed TLS handshakes.");
	fprintf(f, "popbox_tls_handshakes_total %llu\n", (unsigned long long)SUM(m, tls_handshakes));
	family(f, om, "popbox_tls_resumptions_total", "counter",
	    "Completed TLS handshakes that resumed a session.");
	fprintf(f, "popbox_tls_resumptions_total %llu\n", (unsigned long long)SUM(m, tls_resumed));
	family(f, om, "popbox_tls_failures_total", "counter", "TLS handshakes that failed.");
	fprintf(f, "popbox_tls_failures_total %llu\n", (unsigned long long)SUM(m, tls_failed));

	family(f, om, "popbox_lmtp_deliveries_total", "counter",
	    "LMTP deliveries (one per recipient) by result.");
	for (size_t i = 0; i < METRICS_DELIVERY_N; i++)
		fprintf(f, "popbox_lmtp_deliveries_total{result=\"%s\"} %llu\n", delivery_names[i],
		    (unsigned long long)SUM(m, lmtp_deliveries[i]));

	family(f, om, "popbox_maildrop_opens_total", "counter",
	    "Maildrop opens by the workers, by where they ran: on the worker's loop from the "
	    "index alone, or on its store thread.");
	for (size_t i = 0; i < METRICS_OPEN_N; i++)
		fprintf(f, "popbox_maildrop_opens_total{on=\"%s\"} %llu\n", open_names[i],
		    (unsigned long long)SUM(m, maildrop_opens[i]));
	family(f, om, "popbox_maildrop_quick_fallbacks_total", "counter",
	    "Opens tried on the loop that needed more than the index (then the store thread "
	    "opened the maildrop).");
	fprintf(f, "popbox_maildrop_quick_fallbacks_total %llu\n",
	    (unsigned long long)SUM(m, maildrop_quick_fallbacks));

	family(f, om, "popbox_process_restarts_total", "counter",
	    "Child processes restarted by the master after they died, by role.");
	for (size_t i = 0; i < METRICS_ROLE_N; i++)
		fprintf(f, "popbox_process_restarts_total{role=\"%s\"} %llu\n", role_names[i],
		    (unsigned long long)SUM(m, restarts[i]));
	if (om)
		fputs("# EOF\n", f);
	if (fclose(f) != 0)
		fatal("metrics text");
	return len;
}

struct metrics_row *
metrics_block_new(void)
{
	struct metrics_row *b = mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return b == MAP_FAILED ? NULL : b;   /* zeroed by the kernel */
}

void
metrics_block_free(struct metrics_row *b)
{
	if (b != NULL)
		munmap(b, sizeof(*b));
}

void
metrics_attach_block(struct metrics_row *b)
{
	metrics_self = b;
}

/* One counter of a session process's row: what it grew by since seen. */
static uint64_t
fold_counter(const uint64_t *now, uint64_t *seen)
{
	uint64_t v = __atomic_load_n(now, __ATOMIC_RELAXED);
	if (v <= *seen)
		return 0;   /* counters only grow: a smaller value is no news */
	uint64_t d = v - *seen;
	*seen = v;
	return d;
}

void
metrics_block_fold(const struct metrics_row *b, struct metrics_row *seen, unsigned max_sessions)
{
	if (b == NULL)
		return;
	for (size_t i = 0; i < METRICS_STATE_N; i++) {
		int64_t v = __atomic_load_n(&b->sessions[i], __ATOMIC_RELAXED);
		if (v < 0)
			v = 0;
		if (v > (int64_t)max_sessions)
			v = (int64_t)max_sessions;
		if (v != seen->sessions[i])
			METRICS_ADD(sessions[i], v - seen->sessions[i]);
		seen->sessions[i] = v;
	}
	for (size_t i = 0; i < METRICS_MECH_N; i++)
		for (size_t j = 0; j < METRICS_LOGIN_N; j++) {
			uint64_t d = fold_counter(&b->logins[i][j], &seen->logins[i][j]);
			if (d > 0)
				METRICS_ADD(logins[i][j], d);
		}
	for (size_t i = 0; i < METRICS_COMMAND_N; i++) {
		uint64_t d = fold_counter(&b->commands[i], &seen->commands[i]);
		if (d > 0)
			METRICS_ADD(commands[i], d);
	}
	uint64_t d = fold_counter(&b->retrieved, &seen->retrieved);
	if (d > 0)
		METRICS_ADD(retrieved, d);
	if ((d = fold_counter(&b->deleted, &seen->deleted)) > 0)
		METRICS_ADD(deleted, d);
	if ((d = fold_counter(&b->bytes_sent, &seen->bytes_sent)) > 0)
		METRICS_ADD(bytes_sent, d);
}

void
metrics_block_gone(struct metrics_row *seen)
{
	for (size_t i = 0; i < METRICS_STATE_N; i++) {
		if (seen->sessions[i] != 0)
			METRICS_ADD(sessions[i], -seen->sessions[i]);
		seen->sessions[i] = 0;
	}
}

void
metrics_detach(struct metrics *m)
{
	metrics_self = NULL;
	if (m != NULL)
		munmap(m, sizeof(struct metrics) + m->n_rows * sizeof(struct metrics_row));
}
