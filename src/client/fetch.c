/* popbox fetch: for each account, connect, plan what to do with each
 * message, then run the plan with RETR/DELE pipelined in a window.
 *
 * The safety argument (design.md §7, reliability.md §3.7):
 *  - a message is DELE'd only after its delivery is durable (commit(), or
 *    for Maildir the sync of its batch: sync_batch(), deliver.h);
 *  - with Maildir, the delivered file's name carries a marker derived from
 *    (account, UIDL, size), and the next run finds it: a run killed at any
 *    moment between delivery and the server's UPDATE re-DELEs the message
 *    instead of delivering it again (exactly once). The scan fsyncs new/
 *    and cur/ before it reads them (deliver_maildir_scan), so a name that
 *    a killed or failed run moved into new/ without its fsync is durable
 *    before its DELE; if that fsync fails, nothing is deleted;
 *  - the state file records delivered UIDLs (keep mode, and the delete-mode
 *    window for mbox/mda); it is written atomically at checkpoints;
 *  - on a local delivery failure the session is dropped without QUIT, so
 *    the server deletes nothing in that session.
 */
#include "client/fetch.h"
#include "client/account.h"
#include "client/deliver.h"
#include "client/pop3c.h"
#include "client/uidl_state.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Commands in flight when the server offers PIPELINING. Each is a few
 * bytes, so the window never fills a socket buffer: our writes cannot
 * block while the server is blocked writing a message to us. */
#define FETCH_PIPELINE_WINDOW 32
/* Write the state file at least this often during a long fetch (and
 * after this many new entries), so a crash costs little re-delivery for
 * mbox/mda. */
#define FETCH_STATE_SAVE_SEC 1
#define FETCH_STATE_SAVE_ENTRIES 100
/* A message body may exceed its LIST size (CRLF counting, broken servers)
 * but not by this much: beyond it the server is hostile (reliability §4.7). */
#define FETCH_BODY_SLACK 65536
/* Progress line refresh interval, in milliseconds. */
#define FETCH_PROGRESS_MS 200
/* Maildir batches: messages whole in tmp/ are made durable together (one
 * sync, one fsync of new/) when the batch has this many messages or bytes,
 * when it is this old, or when no RETR answer is left to read; only then
 * are their DELEs sent. Bigger batches amortise the sync; these bound the
 * work a crash redoes and how long a message waits to appear in new/. */
#define FETCH_BATCH_MSGS 64
#define FETCH_BATCH_BYTES (8 * 1024 * 1024)
#define FETCH_BATCH_SEC 1.0

struct fetch_options {
	const char *config;
	bool list, rebuild, quiet, verbose;
	struct account over;
	bool have_over;
};

enum msg_action { ACT_NONE, ACT_FETCH, ACT_DELE, ACT_KEEP, ACT_SKIP_SIZE };

struct msg {
	uint64_t size;
	char *uidl;
	bool listed, ambiguous, delivered, dele_sent, failed;
	bool pending;           /* whole in tmp/, waiting for the batch sync */
	uint8_t action;
	char marker[17];
};

struct marker_seen {
	uint64_t value;
	int64_t when;
};

struct run {
	struct account *a;
	const struct fetch_options *o;
	struct pop3c *s;
	const struct deliver_ops *backend;	/* of a->deliver_kind */
	struct deliverer *d;
	struct uidl_state st;
	bool have_state;
	struct msg *m;
	uint32_t count;
	bool have_uidl;
	char *account_key;
	struct marker_seen *markers;
	size_t nmarkers, capmarkers;
	uint32_t n_fetch_planned, n_fetched, n_deleted, n_kept, n_skipped, n_failed;
	uint64_t bytes_planned, bytes_fetched;
	double t0, last_progress, last_save;
	size_t unsaved;
	uint32_t *batch;        /* messages pending in the deliverer */
	uint32_t nbatch;
	uint64_t batch_bytes;
	double batch_t0;
	bool progress_on;
	int soft_code;          /* mda failure status, reported at the end */
	char soft_msg[1024];
};

static double
now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
human_size(uint64_t n, char *out, size_t size)
{
	if (n < 1024)
		snprintf(out, size, "%" PRIu64 " B", n);
	else if (n < 1024 * 1024)
		snprintf(out, size, "%.1f KB", n / 1024.0);
	else if (n < 1024ULL * 1024 * 1024)
		snprintf(out, size, "%.1f MB", n / (1024.0 * 1024));
	else
		snprintf(out, size, "%.2f GB", n / (1024.0 * 1024 * 1024));
}

static void
progress(struct run *r, bool force)
{
	if (!r->progress_on)
		return;
	double t = now_sec();
	if (!force && (t - r->last_progress) * 1000 < FETCH_PROGRESS_MS)
		return;
	r->last_progress = t;
	char done[32], rate[32], eta[32] = "--:--";
	double el = t - r->t0;
	double bps = el > 0.05 ? r->bytes_fetched / el : 0;
	human_size(r->bytes_fetched, done, sizeof(done));
	human_size((uint64_t)bps, rate, sizeof(rate));
	if (bps > 0 && r->bytes_planned >= r->bytes_fetched) {
		uint64_t left = (uint64_t)((r->bytes_planned - r->bytes_fetched) / bps);
		snprintf(eta, sizeof(eta), "%" PRIu64 ":%02" PRIu64, left / 60, left % 60);
	}
	fprintf(stderr, "\r\033[K%s: message %u/%u, %s, %s/s, ETA %s", r->a->name,
	    r->n_fetched + r->n_failed, r->n_fetch_planned, done, rate, eta);
	fflush(stderr);
}

static void
progress_clear(struct run *r)
{
	if (r->progress_on) {
		fprintf(stderr, "\r\033[K");
		fflush(stderr);
	}
}

static char *
state_dir(struct fetch_error *err)
{
	const char *x = getenv("XDG_STATE_HOME");
	char *dir;
	if (x != NULL && x[0] == '/')
		dir = xasprintf("%s/popbox", x);
	else {
		const char *home = getenv("HOME");
		if (home == NULL || home[0] == '\0') {
			fetch_error_set(err, EX_CONFIG, "neither XDG_STATE_HOME nor HOME is set");
			return NULL;
		}
		dir = xasprintf("%s/.local/state/popbox", home);
	}
	/* mkdir -p, private */
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		(void)mkdir(dir, 0700);
		*p = '/';
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		fetch_error_set(err, EX_CANTCREAT, "cannot create state directory %s: %s", dir,
		    strerror(errno));
		free(dir);
		return NULL;
	}
	return dir;
}

/* ---- markers found in the Maildir ---- */

static void
marker_add(void *ctx, const char *marker, int64_t when)
{
	struct run *r = ctx;
	if (r->nmarkers == r->capmarkers) {
		r->capmarkers = r->capmarkers ? r->capmarkers * 2 : 256;
		r->markers = xrealloc(r->markers, r->capmarkers * sizeof(*r->markers));
	}
	r->markers[r->nmarkers].value = strtoull(marker, NULL, 16);
	r->markers[r->nmarkers].when = when;
	r->nmarkers++;
}

static int
marker_cmp(const void *a, const void *b)
{
	uint64_t x = ((const struct marker_seen *)a)->value;
	uint64_t y = ((const struct marker_seen *)b)->value;
	return x < y ? -1 : x > y;
}

static const struct marker_seen *
marker_find(struct run *r, const char *marker)
{
	struct marker_seen key = { strtoull(marker, NULL, 16), 0 };
	if (r->nmarkers == 0)
		return NULL;
	return bsearch(&key, r->markers, r->nmarkers, sizeof(key), marker_cmp);
}

/* The marker covers account, UIDL and LIST size, so a server that reuses
 * a UIDL for a different message (size differs) is not mistaken for an
 * old one. */
static void
msg_marker(struct run *r, uint32_t i)
{
	char *id = xasprintf("%s %" PRIu64, r->m[i].uidl, r->m[i].size);
	deliver_marker(r->account_key, id, r->m[i].marker);
	free(id);
}

/* ---- listings ---- */

static bool
list_line(void *ctx, const char *line, struct fetch_error *err)
{
	struct run *r = ctx;
	uint32_t n;
	uint64_t size;
	if (!pop3_parse_list_line(line, &n, &size) || n > r->count || r->m[n - 1].listed)
		return fetch_error_set(err, EX_PROTOCOL, "the server sent an invalid LIST line");
	r->m[n - 1].listed = true;
	r->m[n - 1].size = size;
	return true;
}

static bool
uidl_line(void *ctx, const char *line, struct fetch_error *err)
{
	struct run *r = ctx;
	uint32_t n;
	const char *uid;
	if (!pop3_parse_uidl_line(line, &n, &uid) || n > r->count || r->m[n - 1].uidl != NULL)
		return fetch_error_set(err, EX_PROTOCOL, "the server sent an invalid UIDL line");
	r->m[n - 1].uidl = xstrdup(uid);
	return true;
}

static int
uidl_ptr_cmp(const void *a, const void *b)
{
	const struct msg *x = *(struct msg *const *)a, *y = *(struct msg *const *)b;
	return strcmp(x->uidl, y->uidl);
}

static bool
read_listings(struct run *r, struct fetch_error *err)
{
	struct pop3c *s = r->s;
	enum pop3_status st = pop3c_command(s, "STAT", err);
	uint64_t octets;
	if (st == POP3_INVALID)
		return false;
	if (st != POP3_OK)
		return pop3c_fail(s, EX_TEMPFAIL, "STAT failed", err);
	if (!pop3_parse_stat(s->text, &r->count, &octets))
		return fetch_error_set(err, EX_PROTOCOL, "the server sent an invalid STAT reply");
	r->m = xcalloc(r->count ? r->count : 1, sizeof(*r->m));
	if (r->count == 0)
		return true;
	st = pop3c_command(s, "LIST", err);
	if (st == POP3_INVALID)
		return false;
	if (st != POP3_OK)
		return pop3c_fail(s, EX_TEMPFAIL, "LIST failed", err);
	if (!pop3c_read_lines(s, r->count, list_line, r, err))
		return false;
	for (uint32_t i = 0; i < r->count; i++)
		if (!r->m[i].listed)
			return fetch_error_set(err, EX_PROTOCOL, "LIST did not list message %u", i + 1);
	if (!s->capa.have_capa || s->capa.uidl) {
		st = pop3c_command(s, "UIDL", err);
		if (st == POP3_INVALID)
			return false;
		if (st == POP3_OK) {
			if (!pop3c_read_lines(s, r->count, uidl_line, r, err))
				return false;
			r->have_uidl = true;
			for (uint32_t i = 0; i < r->count; i++)
				if (r->m[i].uidl == NULL)
					return fetch_error_set(err, EX_PROTOCOL,
					    "UIDL did not list message %u", i + 1);
		}
	}
	if (r->have_uidl) {
		/* duplicated UIDLs are ambiguous: fetched, never trusted as "seen" */
		struct msg **v = xmalloc(r->count * sizeof(*v));
		for (uint32_t i = 0; i < r->count; i++)
			v[i] = &r->m[i];
		qsort(v, r->count, sizeof(*v), uidl_ptr_cmp);
		for (uint32_t i = 1; i < r->count; i++)
			if (!strcmp(v[i]->uidl, v[i - 1]->uidl))
				v[i]->ambiguous = v[i - 1]->ambiguous = true;
		free(v);
	}
	return true;
}

/* ---- plan ---- */

static void
plan(struct run *r, int64_t now)
{
	const struct account *a = r->a;
	for (uint32_t i = 0; i < r->count; i++) {
		struct msg *m = &r->m[i];
		struct uidl_entry *e = NULL;
		bool known = false;
		int64_t first = now;

		if (r->have_uidl && !m->ambiguous) {
			e = uidl_state_find(&r->st, m->uidl);
			if (e != NULL) {
				e->on_server = true;
				if (e->size == m->size) {
					known = true;
					first = e->first_seen;
				}
			}
			if (r->backend->scan != NULL) {
				msg_marker(r, i);
				const struct marker_seen *ms = marker_find(r, m->marker);
				if (ms != NULL && !known) {
					known = true;
					first = ms->when;
					if (!r->o->list)
						uidl_state_add(&r->st, m->uidl, first, m->size);
				}
			}
		}
		if (known) {
			bool old = a->keep_days >= 0 && now - first >= a->keep_days * 86400;
			m->action = !a->keep || old ? ACT_DELE : ACT_KEEP;
		} else if (a->max_size >= 0 && m->size > (uint64_t)a->max_size) {
			m->action = ACT_SKIP_SIZE;
		} else {
			m->action = ACT_FETCH;
			r->n_fetch_planned++;
			r->bytes_planned += m->size;
		}
	}
}

static void
print_list(struct run *r)
{
	static const char *const what[] = { "", "fetch", "delete (already delivered)",
	    "keep (already delivered)", "skip (larger than max_size)" };
	uint32_t n[5] = { 0 };
	printf("%s: %u messages on the server\n", r->a->name, r->count);
	for (uint32_t i = 0; i < r->count; i++) {
		char clean[80];
		const struct msg *m = &r->m[i];
		str_sanitize(clean, sizeof(clean), m->uidl ? m->uidl : "-",
		    strlen(m->uidl ? m->uidl : "-"));
		printf("%6u %10" PRIu64 "  %-24s %s\n", i + 1, m->size, clean, what[m->action]);
		n[m->action]++;
	}
	char sz[32];
	human_size(r->bytes_planned, sz, sizeof(sz));
	printf("%s: would fetch %u (%s), delete %u, keep %u, skip %u\n", r->a->name,
	    n[ACT_FETCH], sz, n[ACT_DELE] + (r->a->keep ? 0 : n[ACT_FETCH]), n[ACT_KEEP],
	    n[ACT_SKIP_SIZE]);
}

/* ---- state checkpoints ---- */

static bool
state_checkpoint(struct run *r, bool force, struct fetch_error *err)
{
	if (!r->have_state || !r->st.dirty)
		return true;
	double t = now_sec();
	if (!force && r->unsaved < FETCH_STATE_SAVE_ENTRIES &&
	    t - r->last_save < FETCH_STATE_SAVE_SEC)
		return true;
	r->last_save = t;
	r->unsaved = 0;
	return uidl_state_save(&r->st, err);
}

/* ---- the transaction ---- */

/* Where the pieces of one RETR body go (retr_piece). */
struct retr_sink {
	struct run *r;
	bool delivering;           /* false after a local error: pieces dropped */
	uint64_t octets;           /* message bytes, as delivered */
	struct fetch_error *local;
};

static void
retr_piece(void *ctx, const char *data, size_t len)
{
	struct retr_sink *k = ctx;
	struct run *r = k->r;
	if (k->delivering && !r->d->ops->write(r->d, data, len, k->local)) {
		r->d->ops->abort(r->d);
		k->delivering = false;
	}
	k->octets += len;
	r->bytes_fetched += len;
	progress(r, false);
}

/* Stream one RETR body into the deliverer. A local error stops delivery
 * but the body is still consumed up to its end when possible. */
static bool
retr_body(struct run *r, uint32_t i, struct fetch_error *err, struct fetch_error *local)
{
	struct msg *m = &r->m[i];
	struct deliver_message dm = {
		.uidl = m->uidl,
		.marker = r->have_uidl && !m->ambiguous && m->marker[0] ? m->marker : NULL,
		.number = i + 1,
		.list_size = m->size,
	};
	struct retr_sink k = { .r = r, .delivering = true, .local = local };

	if (!r->d->ops->begin(r->d, &dm, local))
		k.delivering = false;
	switch (pop3c_read_body(r->s, m->size * 2 + FETCH_BODY_SLACK, retr_piece, &k, err)) {
	case POP3C_BODY_OK:
		break;
	case POP3C_BODY_TOO_LONG:
		if (k.delivering)
			r->d->ops->abort(r->d);
		return fetch_error_set(err, EX_PROTOCOL,
		    "message %u is far larger than the %" PRIu64 " octets LIST announced; "
		    "aborting", i + 1, m->size);
	case POP3C_BODY_FAILED:
		if (k.delivering)
			r->d->ops->abort(r->d);
		return false;	/* partial message discarded */
	}
	if (!k.delivering)
		return true;
	if (r->d->ops->end != NULL) {
		/* durable later, with its batch (sync_batch) */
		if (!r->d->ops->end(r->d, local))
			return true;
		if (r->nbatch == 0)
			r->batch_t0 = now_sec();
		r->batch[r->nbatch++] = i;
		r->batch_bytes += k.octets;
		m->pending = true;
		return true;
	}
	if (!r->d->ops->commit(r->d, local))
		return true;
	m->delivered = true;
	return true;
}

/* Message i is durable locally: count it, record it, queue its DELE. */
static void
delivered(struct run *r, uint32_t i, uint32_t *dq, uint32_t *dq_tail)
{
	struct msg *m = &r->m[i];
	m->delivered = true;
	r->n_fetched++;
	if (r->have_uidl && !m->ambiguous) {
		struct uidl_entry *e = uidl_state_add(&r->st, m->uidl, (int64_t)time(NULL), m->size);
		e->first_seen = (int64_t)time(NULL);
		e->on_server = true;
		r->unsaved++;
	}
	if (!r->a->keep || r->a->keep_days == 0)
		dq[(*dq_tail)++] = i;
	else
		r->n_kept++;
}

static bool
batch_due(struct run *r, uint32_t retr_left)
{
	return r->nbatch >= FETCH_BATCH_MSGS || r->batch_bytes >= FETCH_BATCH_BYTES ||
	    retr_left == 0 || now_sec() - r->batch_t0 >= FETCH_BATCH_SEC;
}

/* Make the pending batch durable; only then do its messages count as
 * delivered and get their DELE queued. On failure none of them does (the
 * deliverer keeps in new/ only what it could make durable there; the next
 * run deletes those by their markers). */
static bool
sync_batch(struct run *r, uint32_t *dq, uint32_t *dq_tail, struct fetch_error *local)
{
	bool ok = r->nbatch == 0 || r->d->ops->sync(r->d, local);
	for (uint32_t k = 0; k < r->nbatch; k++) {
		uint32_t i = r->batch[k];
		r->m[i].pending = false;
		if (ok) {
			delivered(r, i, dq, dq_tail);
		} else {
			r->m[i].failed = true;
			r->n_failed++;
		}
	}
	r->nbatch = 0;
	r->batch_bytes = 0;
	return ok;
}

static bool
run_transaction(struct run *r, struct fetch_error *err)
{
	struct pop3c *s = r->s;
	bool pipelining = r->a->pipelining != 0 && s->capa.pipelining;
	unsigned window = pipelining ? FETCH_PIPELINE_WINDOW : 1;
	struct { uint8_t type; uint32_t msg; } inflight[FETCH_PIPELINE_WINDOW];
	unsigned head = 0, n_inflight = 0;
	char cmds[FETCH_PIPELINE_WINDOW * 20];	/* "DELE 4294967295\r\n" */
	uint32_t *dq = xmalloc((r->count + 1) * sizeof(*dq));
	uint32_t dq_head = 0, dq_tail = 0, next = 0;
	uint32_t retr_left = r->n_fetch_planned;	/* RETR answers not yet read */
	bool fatal_local = false;
	bool ok = false;

	r->batch = xmalloc((r->count + 1) * sizeof(*r->batch));
	if (fetch_trace)
		fprintf(stderr, "popbox: %s: pipelining %s\n", r->a->name, pipelining ? "on" : "off");
	for (;;) {
		if (r->nbatch > 0 && batch_due(r, retr_left)) {
			struct fetch_error local = { 0 };
			if (!sync_batch(r, dq, &dq_tail, &local)) {
				/* a local disk problem: stop, delete nothing */
				fatal_local = true;
				*err = local;
			} else if (!state_checkpoint(r, false, err)) {
				fatal_local = true;
			}
		}
		/* Refill the window when half of it has been answered, in one
		 * write: the server still has half a window of commands to
		 * work on meanwhile. */
		size_t cmdlen = 0;
		while (n_inflight < window && !fatal_local &&
		    (cmdlen > 0 || n_inflight <= window / 2)) {
			uint8_t type;
			uint32_t msgno;
			if (dq_head < dq_tail) {
				type = ACT_DELE;
				msgno = dq[dq_head++];
			} else {
				while (next < r->count && r->m[next].action != ACT_FETCH &&
				    r->m[next].action != ACT_DELE)
					next++;
				if (next == r->count)
					break;
				type = r->m[next].action;
				msgno = next++;
			}
			cmdlen += (size_t)snprintf(cmds + cmdlen, sizeof(cmds) - cmdlen, "%s %u\r\n",
			    type == ACT_FETCH ? "RETR" : "DELE", msgno + 1);
			unsigned slot = (head + n_inflight) % FETCH_PIPELINE_WINDOW;
			inflight[slot].type = type;
			inflight[slot].msg = msgno;
			n_inflight++;
		}
		if (cmdlen > 0 && !pop3c_send_lines(s, cmds, cmdlen, err))
			goto out;
		if (n_inflight == 0)
			break;
		uint8_t type = inflight[head].type;
		uint32_t i = inflight[head].msg;
		head = (head + 1) % FETCH_PIPELINE_WINDOW;
		n_inflight--;
		enum pop3_status st = pop3c_status(s, err);
		if (st == POP3_INVALID)
			goto out;
		struct msg *m = &r->m[i];
		if (type == ACT_DELE) {
			if (st == POP3_OK) {
				m->dele_sent = true;
			} else {
				char clean[120];
				str_sanitize(clean, sizeof(clean), s->text, strlen(s->text));
				log_warnx("%s: DELE %u refused: %s", r->a->name, i + 1, clean);
			}
			continue;
		}
		retr_left--;
		if (st != POP3_OK) {
			char clean[120];
			str_sanitize(clean, sizeof(clean), s->text, strlen(s->text));
			log_warnx("%s: RETR %u refused: %s", r->a->name, i + 1, clean);
			m->failed = true;
			r->n_failed++;
			/* left on the server: tell cron to come back */
			if (r->soft_code == 0) {
				r->soft_code = EX_TEMPFAIL;
				snprintf(r->soft_msg, sizeof(r->soft_msg), "RETR %u refused", i + 1);
			}
			continue;
		}
		struct fetch_error local = { 0 };
		if (fatal_local) {
			/* already failing: drain the pipelined reply, deliver
			 * nothing; an endless body just drops the session */
			if (!pop3c_skip_body(s, m->size * 2 + FETCH_BODY_SLACK, err))
				goto out;
			continue;
		}
		if (!retr_body(r, i, err, &local))
			goto out;
		if (!m->delivered && !m->pending) {
			m->failed = true;
			r->n_failed++;
			if (r->backend->refusal_per_message && local.code != EX_OSERR) {
				/* the command refused this one message: leave it on the
				 * server, carry on with the others */
				fprintf(stderr, "popbox: %s: message %u: %s\n", r->a->name, i + 1,
				    local.msg);
				if (r->soft_code == 0) {
					r->soft_code = local.code;
					snprintf(r->soft_msg, sizeof(r->soft_msg), "%s", local.msg);
				}
				continue;
			}
			/* a local disk problem: stop, delete nothing in this session;
			 * the batch waiting for its sync is dropped (never visible,
			 * removed from tmp/ when the deliverer closes) */
			fatal_local = true;
			*err = local;
			for (uint32_t k = 0; k < r->nbatch; k++) {
				r->m[r->batch[k]].pending = false;
				r->m[r->batch[k]].failed = true;
				r->n_failed++;
			}
			r->nbatch = 0;
			r->batch_bytes = 0;
			continue;
		}
		if (m->pending)
			continue;	/* delivered(), queued by sync_batch() */
		delivered(r, i, dq, &dq_tail);
		if (!state_checkpoint(r, false, err))
			fatal_local = true;
	}
	ok = !fatal_local;
out:
	if (r->nbatch > 0) {
		/* the connection failed: keep what arrived whole (no DELE can
		 * follow; the next run finds the markers and deletes them) */
		struct fetch_error local = { 0 };
		if (!sync_batch(r, dq, &dq_tail, &local) && err->code == 0)
			*err = local;
	}
	free(dq);
	free(r->batch);
	r->batch = NULL;
	return ok;
}

static bool
lock_account(const char *dir, const char *name, int *fd_out, struct fetch_error *err)
{
	char *path = xasprintf("%s/%s.lock", dir, name);
	int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		fetch_error_set(err, EX_CANTCREAT, "cannot open lock file %s: %s", path,
		    strerror(errno));
		free(path);
		return false;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		fetch_error_set(err, EX_TEMPFAIL,
		    "account %s is being fetched by another popbox (lock %s); try again later",
		    name, path);
		close(fd);
		free(path);
		return false;
	}
	free(path);
	*fd_out = fd;
	return true;
}

static int
fetch_account(struct account *a, const struct fetch_options *o)
{
	struct fetch_error err = { 0 };
	struct run r;
	char *dir = NULL, *password = NULL, *state_path = NULL;
	int lockfd = -1;
	bool quit_ok = false;

	memset(&r, 0, sizeof(r));
	r.a = a;
	r.o = o;
	r.t0 = r.last_save = now_sec();
	r.account_key = xasprintf("%s@%s", a->user, a->host);
	r.progress_on = !o->quiet && !o->list && !o->rebuild && isatty(2);

	r.backend = deliver_backend(a->deliver_kind);
	if (r.backend == NULL) {
		fetch_error_set(&err, EX_CONFIG, "no delivery target");
		goto out;
	}
	if (o->rebuild && r.backend->scan == NULL) {
		fetch_error_set(&err, EX_CONFIG,
		    "--rebuild-state reads a Maildir; account %s does not deliver to one", a->name);
		goto out;
	}
	if (a->insecure)
		fprintf(stderr, "popbox: WARNING: %s: TLS certificate verification is OFF "
		    "(--insecure): anyone on the path can read your password and mail\n", a->name);
	if ((dir = state_dir(&err)) == NULL)
		goto out;
	if (!lock_account(dir, a->name, &lockfd, &err))
		goto out;
	state_path = xasprintf("%s/%s.state", dir, a->name);
	char *header = xasprintf("account %s server %s@%s:%s", a->name, a->user, a->host, a->port);
	bool loaded = uidl_state_load(&r.st, state_path, header, &err);
	free(header);
	if (!loaded) {
		uidl_state_free(&r.st);
		goto out;
	}
	r.have_state = true;
	if (!account_get_password(a, &password, &err))
		goto out;
	r.s = pop3c_open(a, password, &err);
	free_secret(password);
	password = NULL;
	if (r.s == NULL)
		goto out;
	if (!read_listings(&r, &err))
		goto out;
	if (!r.have_uidl && r.count > 0 && (a->keep || o->rebuild)) {
		fetch_error_set(&err, EX_UNAVAILABLE,
		    "%s does not support UIDL: keep mode and --rebuild-state need it (delete "
		    "mode works)", a->host);
		goto out;
	}
	if (r.backend->scan != NULL && r.have_uidl) {
		if (!r.backend->scan(a->deliver_target, marker_add, &r, &err))
			goto out;
		if (r.nmarkers > 0)
			qsort(r.markers, r.nmarkers, sizeof(*r.markers), marker_cmp);
	}
	if (o->rebuild) {
		uint32_t found = 0;
		for (uint32_t i = 0; i < r.count; i++) {
			msg_marker(&r, i);
			const struct marker_seen *ms = marker_find(&r, r.m[i].marker);
			if (ms != NULL && !r.m[i].ambiguous) {
				struct uidl_entry *e = uidl_state_add(&r.st, r.m[i].uidl, ms->when,
				    r.m[i].size);
				e->first_seen = ms->when;
				e->on_server = true;
				found++;
			}
		}
		r.st.dirty = true;
		if (!uidl_state_save(&r.st, &err))
			goto out;
		if (!o->quiet)
			printf("%s: state rebuilt from %s: %u of %u messages on the server were "
			    "already delivered\n", a->name, a->deliver_target, found, r.count);
		quit_ok = pop3c_quit(r.s, &err);
		r.s = NULL;
		goto out;
	}
	plan(&r, (int64_t)time(NULL));
	if (o->list) {
		print_list(&r);
		quit_ok = pop3c_quit(r.s, &err);
		r.s = NULL;
		goto out;
	}
	r.d = deliver_open(a->deliver_kind, a->deliver_target, a->name, &err);
	if (r.d == NULL)
		goto out;
	for (uint32_t i = 0; i < r.count; i++) {
		if (r.m[i].action == ACT_KEEP)
			r.n_kept++;
		if (r.m[i].action == ACT_SKIP_SIZE) {
			r.n_skipped++;
			if (!o->quiet)
				printf("%s: message %u (%" PRIu64 " octets) not fetched: larger than "
				    "max_size %" PRId64 "\n", a->name, i + 1, r.m[i].size, a->max_size);
		}
	}
	bool tx_ok = run_transaction(&r, &err);
	progress_clear(&r);
	if (r.have_uidl) {
		uidl_state_prune(&r.st);
		struct fetch_error serr = { 0 };
		if (!state_checkpoint(&r, true, &serr) && err.code == 0)
			err = serr;
	}
	if (!tx_ok || err.code != 0) {
		/* no QUIT: the server must not enter UPDATE (RFC 1939 §6) */
		pop3c_abort(r.s);
		r.s = NULL;
		goto out;
	}
	quit_ok = pop3c_quit(r.s, &err);
	r.s = NULL;
	for (uint32_t i = 0; i < r.count; i++)
		if (r.m[i].dele_sent && quit_ok)
			r.n_deleted++;
	if (quit_ok && r.have_uidl) {
		/* deletions are committed: forget those UIDLs */
		for (uint32_t i = 0; i < r.count; i++) {
			if (!r.m[i].dele_sent || r.m[i].ambiguous)
				continue;
			struct uidl_entry *e = uidl_state_find(&r.st, r.m[i].uidl);
			if (e != NULL) {
				e->on_server = false;
				r.st.dirty = true;
			}
		}
		uidl_state_prune(&r.st);
		struct fetch_error serr = { 0 };
		if (!state_checkpoint(&r, true, &serr) && err.code == 0)
			err = serr;
	}
out:
	progress_clear(&r);
	if (r.s != NULL)
		pop3c_abort(r.s);
	if (!o->list && !o->rebuild && r.m != NULL && !o->quiet) {
		char sz[32];
		human_size(r.bytes_fetched, sz, sizeof(sz));
		double el = now_sec() - r.t0;
		printf("%s: fetched %u (%s) in %.1fs, deleted %u, kept %u, skipped %u, "
		    "failed %u%s\n", a->name, r.n_fetched, sz, el, r.n_deleted, r.n_kept,
		    r.n_skipped, r.n_failed, err.code ? " (aborted)" : "");
	}
	fflush(stdout);
	int code = err.code;
	if (code != 0)
		fprintf(stderr, "popbox: %s: %s\n", a->name, err.msg);
	else if (r.soft_code != 0)
		code = r.soft_code;
	else if (!quit_ok && (o->list || o->rebuild))
		code = 0;
	if (r.have_state)
		uidl_state_free(&r.st);
	deliver_close(r.d);
	for (uint32_t i = 0; r.m != NULL && i < r.count; i++)
		free(r.m[i].uidl);
	free(r.m);
	free(r.markers);
	free(r.account_key);
	free(state_path);
	free(dir);
	if (lockfd >= 0)
		close(lockfd);
	return code;
}

/* ---- command line ---- */

enum {
	OPT_CONFIG = 1000, OPT_LIST, OPT_REBUILD, OPT_HELP, OPT_KEY,
};

struct keyopt {
	const char *opt, *key;
	bool optional_arg;   /* booleans: --keep means --keep=yes */
};

static const struct keyopt keyopts[] = {
	{ "host", "host", false }, { "port", "port", false }, { "tls", "tls", false },
	{ "tls-trust-file", "tls_trust_file", false },
	{ "tls-fingerprint", "tls_fingerprint", false },
	{ "insecure", "insecure", true }, { "user", "user", false },
	{ "password", "password", false },
	{ "password-command", "password_command", false }, { "auth", "auth", false },
	{ "deliver", "deliver", false }, { "keep", "keep", true },
	{ "keep-days", "keep_days", false }, { "max-size", "max_size", false },
	{ "timeout", "timeout", false }, { "allow-plaintext", "allow_plaintext", true },
	{ "pipelining", "pipelining", false },
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: popbox fetch [options] [ACCOUNT...]\n"
	    "Download mail from POP3 servers into a Maildir, an mbox or a delivery command.\n"
	    "Accounts come from $XDG_CONFIG_HOME/popbox/accounts.conf; no ACCOUNT means all.\n"
	    "\n"
	    "  --config FILE            accounts file\n"
	    "  --list                   show what would be fetched; change nothing\n"
	    "  --rebuild-state          rebuild the state file from the Maildir\n"
	    "  -q, --quiet              no progress, no summary (errors only)\n"
	    "  -v, --verbose            protocol trace on stderr (secrets masked)\n"
	    "Every accounts.conf key is also an option (one-off use, or override):\n"
	    "  --host H --port P --tls implicit|starttls|off --tls-trust-file FILE\n"
	    "  --tls-fingerprint SHA256 --insecure --user U --password-command CMD\n"
	    "  --auth auto|MECH --deliver maildir:PATH|mbox:PATH|mda:CMD --keep[=yes|no]\n"
	    "  --keep-days N --max-size N[K|M] --timeout SEC --allow-plaintext[=yes|no]\n"
	    "  --pipelining auto|yes|no\n"
	    "A password is never taken from the command line: use the file or\n"
	    "--password-command. See popbox(1) and popbox-accounts.conf(5).\n"
	    "Exit: 0 ok, 75 temporary failure, 77 login refused, 78 configuration,\n"
	    "74 local delivery failed, 69 untrusted certificate, 76 protocol error.\n");
}

int
fetch_main(int argc, char **argv)
{
	struct fetch_options o;
	struct fetch_error err = { 0 };
	struct option longopts[N_ELEMENTS(keyopts) + 8];
	size_t n = 0;

	memset(&o, 0, sizeof(o));
	account_init(&o.over);
	for (size_t i = 0; i < N_ELEMENTS(keyopts); i++)
		longopts[n++] = (struct option){ keyopts[i].opt,
		    keyopts[i].optional_arg ? optional_argument : required_argument, NULL,
		    OPT_KEY + (int)i };
	longopts[n++] = (struct option){ "config", required_argument, NULL, OPT_CONFIG };
	longopts[n++] = (struct option){ "list", no_argument, NULL, OPT_LIST };
	longopts[n++] = (struct option){ "rebuild-state", no_argument, NULL, OPT_REBUILD };
	longopts[n++] = (struct option){ "quiet", no_argument, NULL, 'q' };
	longopts[n++] = (struct option){ "verbose", no_argument, NULL, 'v' };
	longopts[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	longopts[n++] = (struct option){ NULL, 0, NULL, 0 };

	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "qvh", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_CONFIG:
			o.config = optarg;
			break;
		case OPT_LIST:
			o.list = true;
			break;
		case OPT_REBUILD:
			o.rebuild = true;
			break;
		case 'q':
			o.quiet = true;
			break;
		case 'v':
			o.verbose = true;
			break;
		case 'h':
			usage(stdout);
			account_free(&o.over);
			return 0;
		default:
			if (c >= OPT_KEY && c < OPT_KEY + (int)N_ELEMENTS(keyopts)) {
				const struct keyopt *k = &keyopts[c - OPT_KEY];
				char where[64];
				snprintf(where, sizeof(where), "option --%s", k->opt);
				if (!account_set(&o.over, k->key, optarg ? optarg : "yes", where, false,
				    &err)) {
					fprintf(stderr, "popbox: %s\n", err.msg);
					account_free(&o.over);
					return err.code;
				}
				o.have_over = true;
				break;
			}
			usage(stderr);
			account_free(&o.over);
			return EX_USAGE;
		}
	}
	fetch_trace = o.verbose;
	log_init("popbox", true, o.verbose);

	struct account *accts = NULL;
	int nacct = 0;
	bool oneoff = optind == argc && o.over.host != NULL;
	if (oneoff) {
		accts = xcalloc(1, sizeof(*accts));
		account_init(&accts[0]);
		nacct = 1;
	} else {
		char *path = o.config ? xstrdup(o.config) : account_default_config_path();
		bool ok = account_load_file(path, true, &accts, &nacct, &err);
		if (!ok) {
			if (errno == ENOENT && o.config == NULL)
				fprintf(stderr, "popbox: no accounts file %s; create it (see "
				    "popbox-accounts.conf(5)) or give --host, --user and --deliver\n",
				    path);
			else
				fprintf(stderr, "popbox: %s\n", err.msg);
			free(path);
			account_free(&o.over);
			return EX_CONFIG;
		}
		free(path);
		if (nacct == 0) {
			fprintf(stderr, "popbox: no [account NAME] section in the accounts file\n");
			account_free(&o.over);
			return EX_CONFIG;
		}
	}
	/* select */
	bool *selected = xcalloc((size_t)nacct, sizeof(bool));
	int status = 0;
	if (optind < argc) {
		for (int i = optind; i < argc; i++) {
			int k;
			for (k = 0; k < nacct; k++)
				if (!strcmp(accts[k].name, argv[i]))
					break;
			if (k == nacct) {
				fprintf(stderr, "popbox: no account named '%s'\n", argv[i]);
				status = EX_CONFIG;
				goto done;
			}
			selected[k] = true;
		}
	} else {
		for (int k = 0; k < nacct; k++)
			selected[k] = true;
	}
	if (o.rebuild && optind == argc && !oneoff && nacct > 1) {
		fprintf(stderr, "popbox: --rebuild-state needs the ACCOUNT to rebuild\n");
		status = EX_USAGE;
		goto done;
	}
	for (int k = 0; k < nacct; k++) {
		if (!selected[k])
			continue;
		struct fetch_error e = { 0 };
		account_override(&accts[k], &o.over);
		int rc;
		if (!account_finish(&accts[k], &e)) {
			fprintf(stderr, "popbox: %s\n", e.msg);
			rc = e.code;
		} else {
			rc = fetch_account(&accts[k], &o);
		}
		if (rc != 0 && status == 0)
			status = rc;
	}
done:
	for (int k = 0; k < nacct; k++)
		account_free(&accts[k]);
	free(accts);
	free(selected);
	account_free(&o.over);
	return status;
}
