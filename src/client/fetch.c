/* popbox fetch, one account (fetch_account): lock it, load its state,
 * log in, read the listings, plan what to do with each message, run the
 * plan (the RETR/DELE pipeline is fetch_pipeline.c), then QUIT or drop
 * the session and save the state. The command line is fetch_cli.c, what
 * the user sees fetch_report.c.
 *
 * The safety argument (docs/RELIABILITY.md §1):
 *  - a message is DELE'd only after its delivery is durable (commit(), or
 *    for Maildir the sync of its batch: sync_batch() in fetch_pipeline.c,
 *    deliver.h);
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
#include "client/fetch_run.h"
#include "client/oauth2.h"
#include "common/log.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Write the state file at least this often during a long fetch (and
 * after this many new entries), so a crash costs little re-delivery for
 * mbox/mda. */
#define FETCH_STATE_SAVE_SEC 1
#define FETCH_STATE_SAVE_ENTRIES 100

double
fetch_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

char *
fetch_state_dir(struct fetch_error *err)
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
		} else if (m->size > (uint64_t)a->max_message_size) {
			m->action = ACT_TOO_BIG;
		} else {
			m->action = ACT_FETCH;
			r->n_fetch_planned++;
			r->bytes_planned += m->size;
		}
	}
}

/* ---- state checkpoints ---- */

bool
fetch_state_checkpoint(struct run *r, bool force, struct fetch_error *err)
{
	if (!r->have_state || !r->st.dirty)
		return true;
	double t = fetch_now();
	if (!force && r->unsaved < FETCH_STATE_SAVE_ENTRIES &&
	    t - r->last_save < FETCH_STATE_SAVE_SEC)
		return true;
	r->last_save = t;
	r->unsaved = 0;
	return uidl_state_save(&r->st, err);
}

/* ---- one account ---- */

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

/* Temp files a killed run left while saving the state file or the OAuth2
 * token file (NAME.state.tmp.PID, NAME.oauth2.tmp.PID): removed once the
 * account's lock is held, when no save of this account can be running. */
static void
clean_state_temps(const char *dir, const char *name)
{
	DIR *dp = opendir(dir);
	if (dp == NULL)
		return;
	char *p1 = xasprintf("%s.state.tmp.", name), *p2 = xasprintf("%s.oauth2.tmp.", name);
	struct dirent *de;
	while ((de = readdir(dp)) != NULL) {
		if (strncmp(de->d_name, p1, strlen(p1)) != 0 &&
		    strncmp(de->d_name, p2, strlen(p2)) != 0)
			continue;
		const char *pid = strrchr(de->d_name, '.') + 1;
		if (pid[0] == '\0' || strspn(pid, "0123456789") != strlen(pid))
			continue;
		(void)unlinkat(dirfd(dp), de->d_name, 0);
	}
	free(p1);
	free(p2);
	closedir(dp);
}

/* The account's lock and state file: the first things a run takes. */
static bool
open_state(struct run *r, struct fetch_error *err)
{
	const struct account *a = r->a;
	if ((r->state_dir = fetch_state_dir(err)) == NULL)
		return false;
	if (!lock_account(r->state_dir, a->name, &r->lockfd, err))
		return false;
	clean_state_temps(r->state_dir, a->name);
	char *path = xasprintf("%s/%s.state", r->state_dir, a->name);
	char *header = xasprintf("account %s server %s@%s:%s", a->name, a->user, a->host, a->port);
	bool loaded = uidl_state_load(&r->st, path, header, err);
	free(header);
	free(path);
	if (!loaded) {
		uidl_state_free(&r->st);
		return false;
	}
	r->have_state = true;
	return true;
}

/* Log in, read the listings, and find what the target already holds. */
static bool
connect_and_list(struct run *r, struct fetch_error *err)
{
	const struct account *a = r->a;
	char *password = NULL;
	bool oauth2 = account_has_oauth2(a);
	if (oauth2 ? !oauth2_access_token(a, r->state_dir, &password, err) :
	    !account_get_password(a, &password, err))
		return false;
	r->s = pop3c_open(a, password, err);
	free_secret(password);
	if (r->s != NULL)
		r->login_delay = r->s->capa.login_delay;
	if (r->s == NULL && oauth2 && err->code == EX_NOPERM)
		oauth2_forget_access_token(a, r->state_dir);
	if (r->s == NULL || !read_listings(r, err))
		return false;
	if (!r->have_uidl && r->count > 0 && (a->keep || r->o->rebuild))
		return fetch_error_set(err, EX_UNAVAILABLE,
		    "%s does not support UIDL: keep mode and --rebuild-state need it (delete "
		    "mode works)", a->host);
	if (r->backend->scan != NULL && r->have_uidl) {
		if (!r->backend->scan(a->deliver_target, marker_add, r, err))
			return false;
		if (r->nmarkers > 0)
			qsort(r->markers, r->nmarkers, sizeof(*r->markers), marker_cmp);
	}
	return true;
}

/* QUIT: true when the server confirmed (its UPDATE state ran). */
static bool
quit(struct run *r, struct fetch_error *err)
{
	bool ok = pop3c_quit(r->s, err);
	r->s = NULL;
	return ok;
}

/* --rebuild-state: every message whose marker is in the Maildir was
 * delivered; write that as the state. Returns quit()'s answer. */
static bool
rebuild_state(struct run *r, struct fetch_error *err)
{
	uint32_t found = 0;
	for (uint32_t i = 0; i < r->count; i++) {
		struct msg *m = &r->m[i];
		msg_marker(r, i);
		const struct marker_seen *ms = marker_find(r, m->marker);
		if (ms != NULL && !m->ambiguous) {
			struct uidl_entry *e = uidl_state_add(&r->st, m->uidl, ms->when, m->size);
			e->first_seen = ms->when;
			e->on_server = true;
			found++;
		}
	}
	r->st.dirty = true;
	if (!uidl_state_save(&r->st, err))
		return false;
	if (!r->o->quiet)
		printf("%s: state rebuilt from %s: %u of %u messages on the server were "
		    "already delivered\n", r->a->name, r->a->deliver_target, found, r->count);
	return quit(r, err);
}

/* A message LIST announces as larger than max_message_size: not fetched
 * (a hostile server can announce any size and then send without end),
 * left on the server, said on stderr; the run ends with EX_PROTOCOL. */
static void
too_big(struct run *r, uint32_t i)
{
	char msg[sizeof(r->soft_msg)];
	snprintf(msg, sizeof(msg), "message %u: the server lists it at %" PRIu64 " octets, "
	    "more than max_message_size (%" PRId64 "); not fetched, left on the server "
	    "(raise max_message_size to fetch it)", i + 1, r->m[i].size,
	    r->a->max_message_size);
	fprintf(stderr, "popbox: %s: %s\n", r->a->name, msg);
	r->m[i].failed = true;
	r->n_too_big++;
	if (r->soft_code == 0) {
		r->soft_code = EX_PROTOCOL;
		snprintf(r->soft_msg, sizeof(r->soft_msg), "%s", msg);
	}
}

/* Count what the plan keeps or skips (and say why a message is skipped). */
static void
count_unfetched(struct run *r)
{
	for (uint32_t i = 0; i < r->count; i++) {
		if (r->m[i].action == ACT_TOO_BIG)
			too_big(r, i);
		if (r->m[i].action == ACT_KEEP)
			r->n_kept++;
		if (r->m[i].action == ACT_SKIP_SIZE) {
			r->n_skipped++;
			if (!r->o->quiet)
				printf("%s: message %u (%" PRIu64 " octets) not fetched: larger than "
				    "max_size %" PRId64 "\n", r->a->name, i + 1, r->m[i].size,
				    r->a->max_size);
		}
	}
}

/* Prune the state to what the server listed and write it now; the first
 * error is kept in err. */
static void
final_checkpoint(struct run *r, struct fetch_error *err)
{
	uidl_state_prune(&r->st);
	struct fetch_error serr = { 0 };
	if (!fetch_state_checkpoint(r, true, &serr) && err->code == 0)
		*err = serr;
}

/* The transaction went through: QUIT commits the deletions, and then the
 * deleted UIDLs leave the state. Returns quit()'s answer. */
static bool
commit_deletions(struct run *r, struct fetch_error *err)
{
	bool quit_ok = quit(r, err);
	if (!quit_ok)
		return false;
	for (uint32_t i = 0; i < r->count; i++)
		if (r->m[i].dele_sent)
			r->n_deleted++;
	if (!r->have_uidl)
		return true;
	for (uint32_t i = 0; i < r->count; i++) {
		if (!r->m[i].dele_sent || r->m[i].ambiguous)
			continue;
		struct uidl_entry *e = uidl_state_find(&r->st, r->m[i].uidl);
		if (e != NULL) {
			e->on_server = false;
			r->st.dirty = true;
		}
	}
	final_checkpoint(r, err);
	return true;
}

/* Deliver what the plan says, then QUIT only if nothing failed. Returns
 * quit()'s answer (false when the session was dropped). */
static bool
fetch_messages(struct run *r, struct fetch_error *err)
{
	const struct account *a = r->a;
	r->d = deliver_open(a->deliver_kind, a->deliver_target, a->name, err);
	if (r->d == NULL)
		return false;
	count_unfetched(r);
	bool tx_ok = fetch_pipeline_run(r, err);
	fetch_report_clear(r);
	if (r->have_uidl)
		final_checkpoint(r, err);
	if (!tx_ok || err->code != 0) {
		/* no QUIT: the server must not enter UPDATE (RFC 1939 §6) */
		pop3c_abort(r->s);
		r->s = NULL;
		return false;
	}
	return commit_deletions(r, err);
}

/* The end of a run: summary, error message, exit status; frees r. */
static int
finish(struct run *r, const struct fetch_error *err, bool quit_ok)
{
	const struct fetch_options *o = r->o;
	fetch_report_clear(r);
	if (r->s != NULL)
		pop3c_abort(r->s);
	if (!o->list && !o->rebuild && r->m != NULL && !o->quiet)
		fetch_report_summary(r, err->code != 0);
	if (!o->list && !o->rebuild)
		fetch_report_final(r, err);
	fflush(stdout);
	int code = err->code;
	if (code != 0)
		fprintf(stderr, "popbox: %s: %s\n", r->a->name, err->msg);
	else if (r->soft_code != 0)
		code = r->soft_code;
	else if (!quit_ok && (o->list || o->rebuild))
		code = 0;
	if (r->have_state)
		uidl_state_free(&r->st);
	deliver_close(r->d);
	for (uint32_t i = 0; r->m != NULL && i < r->count; i++)
		free(r->m[i].uidl);
	free(r->m);
	free(r->markers);
	free(r->account_key);
	free(r->state_dir);
	if (r->lockfd >= 0)
		close(r->lockfd);
	return code;
}

int
fetch_account(struct account *a, const struct fetch_options *o)
{
	struct fetch_error err = { 0 };
	struct run r = {
		.a = a,
		.o = o,
		.backend = deliver_backend(a->deliver_kind),
		.lockfd = -1,
		.login_delay = -1,
		.account_key = xasprintf("%s@%s", a->user, a->host),
		.progress_on = !o->quiet && !o->list && !o->rebuild && isatty(2),
	};
	bool quit_ok = false;

	r.t0 = r.last_save = fetch_now();
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
	if (!open_state(&r, &err) || !connect_and_list(&r, &err))
		goto out;
	if (o->rebuild) {
		quit_ok = rebuild_state(&r, &err);
	} else {
		plan(&r, (int64_t)time(NULL));
		if (o->list) {
			fetch_report_list(&r);
			quit_ok = quit(&r, &err);
		} else {
			quit_ok = fetch_messages(&r, &err);
		}
	}
out:
	return finish(&r, &err, quit_ok);
}
