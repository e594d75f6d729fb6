/* A per-user session process (docs/DESIGN.md "A process per user
 * session"): one logged-in session of a system user, running as that
 * user's uid, forked by the master when a worker hands the connection
 * over. It serves the TRANSACTION and UPDATE states with the same code as a
 * worker (session.c, commands.c, cmd_trans.c, the store) on a loop of its
 * own, and exits when the session ends. It never sees a password hash, the
 * TLS key (freed before anything else) or another user's mail. */
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "common/util.h"
#include "server/commands.h"
#include "server/login.h"
#include "server/popboxd.h"
#include "server/session.h"
#include "server/store_pool.h"
#include "server/worker.h"

static struct worker proc;

static void
sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	/* As in a worker: end the session without UPDATE. */
	proc.stopping = true;
	session_close_all(&proc, "shutdown");
	event_base_loopexit(proc.base, NULL);
}

void
session_proc_main(struct child_env *env, struct session_handoff *h)
{
	prctl(PR_SET_NAME, "popboxd-session");
	log_set_procname("popboxd-session");
	/* Forked from the master, we hold its TLS context and with it the
	 * private key; the worker in front keeps the TLS state, so drop it
	 * before serving a byte (OpenSSL wipes what it frees: main.c). */
	SSL_CTX_free(env->ssl_ctx);
	env->ssl_ctx = NULL;

	proc.config = env->config;
	proc.n_workers = 1;
	proc.auth_fd = -1;
	proc.control_fd = -1;
	proc.exit_when_idle = true;
	proc.read_buf = xmalloc(SESSION_READ_CHUNK);
	proc.line_buf = xmalloc(SESSION_MAX_SASL_LINE + 1);
	struct event_config *ecfg = event_config_new();
	event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	proc.base = event_base_new_with_config(ecfg);
	event_config_free(ecfg);
	if (proc.base == NULL)
		fatalx("event_base_new failed");
	proc.store_pool = store_pool_new_inline(proc.base);
	struct event *tev = evsignal_new(proc.base, SIGTERM, sigterm_cb, NULL);
	evsignal_add(tev, NULL);

	const struct session_origin o = { .id = h->session_id, .peer = h->peer,
	    .peer_ip = h->peer_ip, .loopback = h->loopback, .tls = h->tls };
	struct session *s = session_adopt(&proc, h->fd, &o, h->input, h->input_len,
	    &commands_handler);
	secure_wipe(h->input, h->input_len);
	if (s == NULL)
		fatalx("session %016llx: cannot serve the connection handed over",
		    (unsigned long long)h->session_id);
	/* The user's own EXPIRE and LOGIN-DELAY do not travel with the
	 * handover yet: a session process applies the config's. */
	login_open_maildrop(s, h->user, h->location, h->uidl_format, h->device, 0, 0);
	event_base_dispatch(proc.base);
	/* Free the session whose destruction the end scheduled. */
	event_base_loop(proc.base, EVLOOP_NONBLOCK);
	/* Nothing is buffered (the log writes at once, UPDATE is done and
	 * synced): skip the exit handlers, whose OpenSSL clean-up would free
	 * (and wipe) every page of its state, a copy-on-write fault each. */
	_exit(0);
}
