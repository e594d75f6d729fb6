/* Inside popbox fetch: the state of one account's run, shared by fetch.c
 * (orchestration: state, listings, plan, the end of the session),
 * fetch_pipeline.c (the RETR/DELE transaction) and fetch_report.c (what
 * the user sees). Not for use outside these files.
 *
 * A run owns everything it points to except a, o and backend (borrowed).
 */
#ifndef POPBOX_FETCH_RUN_H
#define POPBOX_FETCH_RUN_H

#include <stdbool.h>
#include <stdint.h>

#include "client/account.h"
#include "client/deliver.h"
#include "client/fetch.h"
#include "client/pop3c.h"
#include "client/uidl_state.h"

/* What the plan does with a message (the order is print_list's).
 * ACT_TOO_BIG: LIST says it is larger than max_message_size; left on the
 * server, and the run ends with EX_PROTOCOL. */
enum msg_action {
	ACT_NONE, ACT_FETCH, ACT_DELE, ACT_KEEP, ACT_SKIP_SIZE, ACT_TOO_BIG, ACT_COUNT
};

/* One message on the server (index = message number - 1). */
struct msg {
	uint64_t size;             /* as LIST gave it */
	char *uidl;                /* NULL without UIDL */
	bool listed, ambiguous, delivered, dele_sent, failed;
	bool pending;              /* whole in tmp/, waiting for the batch sync */
	uint8_t action;            /* enum msg_action */
	char marker[17];           /* deliver_marker() of it, or "" */
};

/* A marker found in the delivery target, and when it was delivered. */
struct marker_seen {
	uint64_t value;
	int64_t when;
};

struct run {
	struct account *a;
	const struct fetch_options *o;
	const struct deliver_ops *backend;	/* of a->deliver_kind */
	struct pop3c *s;                /* the session, NULL once closed */
	struct deliverer *d;            /* NULL until the fetch starts */
	char *state_dir;
	int lockfd;                     /* the account's lock, or -1 */
	struct uidl_state st;
	bool have_state;                /* st loaded (and to be freed) */
	struct msg *m;                  /* count entries, NULL before STAT */
	uint32_t count;
	bool have_uidl;
	char *account_key;              /* user@host: what markers digest */
	struct marker_seen *markers;    /* sorted by value */
	size_t nmarkers, capmarkers;
	uint32_t n_fetch_planned, n_fetched, n_deleted, n_kept, n_skipped, n_failed;
	uint32_t n_too_big;             /* ACT_TOO_BIG: reported as failed */
	uint64_t bytes_planned, bytes_fetched;
	double t0, last_progress, last_save;
	size_t unsaved;                 /* state entries added since the last save */
	bool progress_on;               /* the progress line on our own stderr */
	long login_delay;               /* the server's LOGIN-DELAY after login, -1: none */
	int soft_code;                  /* a refused message's status, reported at the end */
	char soft_msg[1024];
};

/* Seconds on the monotonic clock. */
double fetch_now(void);

/* Write the state file if it changed and force is true, or enough entries
 * or time have gone by since the last write. False with err set (EX_IOERR)
 * when the write fails; the old file is then intact. */
bool fetch_state_checkpoint(struct run *r, bool force, struct fetch_error *err);

/* Run the planned RETRs and DELEs on r->s, pipelined in a window when the
 * server offers PIPELINING and the account allows it, delivering each
 * message through r->d. A DELE is sent only for a message whose delivery
 * is durable. True when every answer was read and nothing local failed
 * (refused messages are counted, with r->soft_code set); false with err
 * set otherwise: the caller must then drop the session without QUIT. */
bool fetch_pipeline_run(struct run *r, struct fetch_error *err);

/* The progress line on stderr (only when r->progress_on): at most every
 * 200 ms unless force. fetch_report_clear() erases it. */
void fetch_report_progress(struct run *r, bool force);
void fetch_report_clear(struct run *r);
/* --list: every message and what a fetch would do with it, on stdout. */
void fetch_report_list(const struct run *r);
/* The line "NAME: fetched N (SIZE) in T s, ..." on stdout. */
void fetch_report_summary(const struct run *r, bool aborted);
/* In a child of fetch_parallel (o->progress_fd >= 0): the run's counts
 * as the last record on the progress pipe ("S ..."), for the table. */
void fetch_report_final(const struct run *r, const struct fetch_error *err);

#endif
