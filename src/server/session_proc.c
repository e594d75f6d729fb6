/* A user's session process (docs/DESIGN.md "A process per user session"):
 * the logged-in sessions of one system user, running as that user's uid,
 * forked by the master at the user's first login. It serves the
 * TRANSACTION and UPDATE states with the same code as a worker (session.c,
 * commands.c, cmd_trans.c, the store) on a loop of its own. Connections
 * arrive from the master (IPC_SESSION_ADOPT, with the descriptor); each
 * session's end is reported (IPC_SESSION_END), and once the master closes
 * the channel (session_process_linger after the last session) the process
 * exits with its last session (also after a reload: the next login gets a
 * process with the new settings). It never sees a password hash, the TLS
 * key (freed before anything else) or another user's mail. Its metrics go
 * to a row of its own that the master folds into the shared table
 * (metrics.h); the master counts its plain sessions for
 * max_connections_per_ip (iplimit.h). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/base64.h"
#include "common/log.h"
#include "common/util.h"
#include "server/commands.h"
#include "server/ipc.h"
#include "server/login.h"
#include "server/popboxd.h"
#include "server/session.h"
#include "server/store_pool.h"
#include "server/worker.h"

static struct worker proc;
static struct session_proc_start *start;
static struct event *ctl_ev;

static void
sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	/* As in a worker: end every session without UPDATE. */
	proc.stopping = true;
	session_close_all(&proc, "shutdown");
	event_base_loopexit(proc.base, NULL);
}

static void
session_freed(struct worker *w, uint64_t id)
{
	unsigned char buf[IPC_HEADER_SIZE + 8];
	const struct ipc_session_end m = { .session_id = id };
	if (start->ctl >= 0)
		(void)ipc_send(start->ctl, buf, ipc_session_end_encode(buf, sizeof(buf), &m));
}

/* A connection of our user from the master. */
static void
adopt(const struct ipc_session_adopt *m, int fd)
{
	unsigned char *input = NULL;
	size_t input_len = 0;
	if (m->input[0] != '\0' && !base64_decode(m->input, strlen(m->input), &input, &input_len)) {
		log_warnx("session %016llx: malformed input from the master", (unsigned long long)m->session_id);
		close(fd);
		return;
	}
	const struct session_origin o = { .id = m->session_id, .peer = m->peer,
	    .peer_ip = m->peer_ip, .loopback = (m->flags & IPC_HANDOVER_LOOPBACK) != 0,
	    .tls = (m->flags & IPC_HANDOVER_TLS) != 0, .mech = (int)m->mech };
	struct session *s = session_adopt(&proc, fd, &o, input, input_len, &commands_handler);
	if (input != NULL) {
		secure_wipe(input, input_len);   /* pipelined input may hold a password */
		free(input);
	}
	if (s == NULL) {
		log_warnx("session %016llx: cannot serve the connection handed over",
		    (unsigned long long)m->session_id);
		session_freed(&proc, m->session_id);
		return;
	}
	login_open_maildrop(s, start->user, start->location, start->uidl_format, m->device,
	    start->expire, start->login_delay);
}

static void
ctl_cb(evutil_socket_t fd, short what, void *arg)
{
	static unsigned char *buf;
	if (buf == NULL)
		buf = xmalloc(IPC_MAX_MSG);
	int passed;
	struct ipc_session_adopt m;
	ssize_t n = ipc_recv_fd(fd, buf, IPC_MAX_MSG, &passed);
	if (n == 0) {
		/* The master lets us go (no login for session_process_linger)
		 * or is gone: finish what is open, take nothing new. */
		event_del(ctl_ev);
		proc.exit_when_idle = true;
		if (proc.sessions == 0)
			event_base_loopexit(proc.base, NULL);
		return;
	}
	if (n < 0)
		return;
	if (!ipc_session_adopt_decode(buf, (size_t)n, &m) || passed < 0) {
		log_warnx("malformed message from the master, ignored");
		if (passed >= 0)
			close(passed);
		return;
	}
	adopt(&m, passed);
	secure_wipe(buf, (size_t)n);
}

void
session_proc_main(struct child_env *env, struct session_proc_start *st)
{
	prctl(PR_SET_NAME, "popboxd-session");
	log_set_procname("popboxd-session");
	/* Forked from the master, we hold its TLS context and with it the
	 * private key; the worker in front keeps the TLS state, so drop it
	 * before serving a byte (OpenSSL wipes what it frees: main.c). */
	SSL_CTX_free(env->ssl_ctx);
	env->ssl_ctx = NULL;
	start = st;

	proc.config = env->config;
	proc.n_workers = 1;
	proc.auth_fd = -1;
	proc.control_fd = -1;
	proc.session_process = true;
	proc.session_freed = session_freed;
	session_buffers_new(&proc);
	proc.next_request = 1;
	struct event_config *ecfg = event_config_new();
	event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	proc.base = event_base_new_with_config(ecfg);
	event_config_free(ecfg);
	if (proc.base == NULL)
		fatalx("event_base_new failed");
	/* The store work runs on the loop: the sessions here are one user's,
	 * who waits for it anyway, and a thread would cost more than it. */
	proc.store_pool = store_pool_new_inline(proc.base);
	struct event *tev = evsignal_new(proc.base, SIGTERM, sigterm_cb, NULL);
	evsignal_add(tev, NULL);
	ctl_ev = event_new(proc.base, st->ctl, EV_READ | EV_PERSIST, ctl_cb, NULL);
	event_add(ctl_ev, NULL);

	event_base_dispatch(proc.base);
	/* Free the sessions whose destruction the end scheduled. */
	start->ctl = -1;
	event_base_loop(proc.base, EVLOOP_NONBLOCK);
	/* Nothing is buffered (the log writes at once, UPDATE is done and
	 * synced): skip the exit handlers, whose OpenSSL clean-up would free
	 * (and wipe) every page of its state, a copy-on-write fault each. */
	_exit(0);
}
