/* A worker process: accepts connections on the inherited listeners and runs
 * every POP3 session on one libevent loop (docs/DESIGN.md "Process model"). It holds no secrets:
 * credentials go to the auth process, which answers asynchronously. */
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "common/log.h"
#include "server/commands.h"
#include "server/ipc.h"
#include "server/ipc_queue.h"
#include "server/iplimit.h"
#include "server/lmtp_session.h"
#include "server/login.h"
#include "server/metrics.h"
#include "server/popboxd.h"
#include "server/proxy.h"
#include "server/session.h"
#include "server/store_pool.h"
#include "server/tls.h"
#include "server/worker.h"
#include "server/limits_popboxd.h"

#include <sys/resource.h>
#include <time.h>

/* After accept() fails for lack of descriptors, stop accepting this long so
 * the loop does not spin; sessions ending meanwhile free descriptors. */
#define WORKER_ACCEPT_PAUSE_MS 500

static struct worker worker;
static struct event *accept_resume_ev;
/* Connections this worker can hold with its open files
 * (POPBOXD_FDS_PER_SESSION each); at that many its POP3 listeners are off and
 * the other workers, accepting from the same sockets, take new ones. */
static unsigned worker_capacity = UINT_MAX;
static unsigned long long worker_nofile;
static bool worker_full;
static unsigned worker_proxy_waits;  /* connections waiting for their PROXY header */
static bool *listener_lmtp;          /* per listener: LMTP (not stopped when full) */
static time_t worker_full_logged;    /* when "full" was last logged (once a minute) */
static bool worker_full_told;
static void worker_check_capacity(struct worker *w);

struct listener_arg {
	struct worker *w;
	bool tls;
	bool lmtp;
};

/* How long a load balancer may take to send its PROXY header. */
#define WORKER_PROXY_TIMEOUT_SECONDS 10

/* A connection from a trusted load balancer whose PROXY header has not fully
 * arrived. The bytes read so far all belong to the header (it is incomplete),
 * so nothing after it (a TLS ClientHello) is ever consumed here. */
struct proxy_wait {
	struct worker *w;
	int fd;
	bool tls;
	struct event *ev;
	size_t have;
	unsigned char buf[PROXY_MAX];
	struct sockaddr_storage peer;
	socklen_t peer_len;
};

static void
proxy_wait_end(struct proxy_wait *pw, const char *why, bool quiet)
{
	if (why != NULL) {
		char host[64] = "?";
		getnameinfo((struct sockaddr *)&pw->peer, pw->peer_len, host, sizeof(host), NULL, 0,
		    NI_NUMERICHOST);
		/* A balancer's TCP health check connects and closes: not news. */
		if (!quiet)
			METRICS_INC(refused[METRICS_REFUSED_PROXY]);
		if (quiet)
			log_debug("connection from %s closed: %s", host, why);
		else
			log_warnx("connection from %s closed: %s", host, why);
		close(pw->fd);
	}
	struct worker *w = pw->w;
	event_free(pw->ev);
	free(pw);
	worker_proxy_waits--;
	worker_check_capacity(w);
}

static void
proxy_wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_wait *pw = arg;
	unsigned char tmp[PROXY_MAX];
	if (what & EV_TIMEOUT) {
		proxy_wait_end(pw, "no PROXY header in time", false);
		return;
	}
	ssize_t n = recv(fd, tmp, sizeof(tmp) - pw->have, MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		proxy_wait_end(pw, "closed before the PROXY header", true);
		return;
	}
	memcpy(pw->buf + pw->have, tmp, (size_t)n);
	struct proxy_header h;
	enum proxy_result r = proxy_parse(pw->buf, pw->have + (size_t)n, &h);
	size_t take = r == PROXY_OK ? h.length - pw->have : (size_t)n;
	if (r == PROXY_BAD || (r == PROXY_NEED_MORE && pw->have + (size_t)n >= PROXY_MAX)) {
		proxy_wait_end(pw, "malformed PROXY header", false);
		return;
	}
	if (recv(fd, tmp, take, 0) != (ssize_t)take) {
		proxy_wait_end(pw, "reading the PROXY header failed", false);
		return;
	}
	pw->have += take;
	if (r == PROXY_NEED_MORE)
		return;
	struct worker *w = pw->w;
	int cfd = pw->fd;
	bool tls = pw->tls;
	if (h.has_address)
		session_create_via(w, cfd, (struct sockaddr *)&h.source, (int)h.source_len,
		    (struct sockaddr *)&pw->peer, (int)pw->peer_len, tls, &commands_handler);
	else   /* the balancer did not say who the client is: not the balancer */
		session_create_unknown(w, cfd, (struct sockaddr *)&pw->peer, (int)pw->peer_len, tls,
		    &commands_handler);
	proxy_wait_end(pw, NULL, false);
}

static bool
worker_addr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

/* An LMTP connection: from the unix socket (its mode decides), loopback,
 * or lmtp_trusted; anyone else could put mail into every maildrop. */
static void
accept_lmtp(struct worker *w, int fd, struct sockaddr *sa, int salen)
{
	if (sa->sa_family != AF_UNIX && !worker_addr_is_loopback(sa) &&
	    !proxy_cidr_match(w->config->lmtp_trusted, w->config->n_lmtp_trusted, sa)) {
		char host[64] = "?";
		getnameinfo(sa, (socklen_t)salen, host, sizeof(host), NULL, 0, NI_NUMERICHOST);
		log_warnx("LMTP connection from %s refused: not in lmtp_trusted", host);
		close(fd);
		return;
	}
	lmtp_session_create(w, fd, sa, salen);
}

static void
accept_conn(struct listener_arg *la, evutil_socket_t fd, struct sockaddr *sa, int salen)
{
	struct worker *w = la->w;
	if (w->stopping) {
		close(fd);
		return;
	}
	if (la->lmtp) {
		accept_lmtp(w, fd, sa, salen);
		return;
	}
	if (!w->config->proxy_protocol) {
		session_create(w, fd, sa, salen, la->tls, &commands_handler);
		return;
	}
	struct proxy_wait *pw = xcalloc(1, sizeof(*pw));
	worker_proxy_waits++;
	pw->w = w;
	pw->fd = fd;
	pw->tls = la->tls;
	memcpy(&pw->peer, sa, (size_t)salen < sizeof(pw->peer) ? (size_t)salen : sizeof(pw->peer));
	pw->peer_len = (socklen_t)salen;
	pw->ev = event_new(w->base, fd, EV_READ | EV_PERSIST, proxy_wait_cb, pw);
	if (!proxy_cidr_match(w->config->proxy_trusted, w->config->n_proxy_trusted, sa)) {
		/* Only a trusted balancer may tell us who the client is. */
		proxy_wait_end(pw, "not in proxy_trusted", false);
		return;
	}
	struct timeval tv = { .tv_sec = WORKER_PROXY_TIMEOUT_SECONDS };
	event_add(pw->ev, &tv);
}

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct listener_arg *la = arg;
	accept_conn(la, fd, sa, salen);
	worker_check_capacity(la->w);
}

/* The POP3 listeners (pop3) and the LMTP ones (lmtp) on or off, each
 * only if asked for. LMTP is not stopped when POP3 sessions fill the
 * worker: mail keeps coming in (LMTP_MAX_SESSIONS bounds it). */
static void
worker_listen(int pop3, int lmtp)
{
	for (size_t i = 0; i < worker.n_listeners; i++) {
		int on = listener_lmtp[i] ? lmtp : pop3;
		if (on > 0)
			evconnlistener_enable(worker.listeners[i]);
		else if (on == 0)
			evconnlistener_disable(worker.listeners[i]);
	}
}

/* After a connection came or went: is the worker full, or no longer?
 * Connections still waiting for their PROXY header count: a connect storm
 * through a balancer is accepted in one go, before any becomes a session. */
static void
worker_check_capacity(struct worker *w)
{
	unsigned n = w->sessions + w->lmtp_sessions + worker_proxy_waits;
	bool full = n >= worker_capacity;
	if (full == worker_full || w->stopping)
		return;
	worker_full = full;
	if (full) {
		time_t now = time(NULL);
		if (now - worker_full_logged >= 60) {
			worker_full_logged = now;
			worker_full_told = true;
			log_warnx("%u connections could use all %llu open files of this worker: it "
			    "accepts no POP3 connection until one ends (other workers may; for more, "
			    "raise the open file limit, LimitNOFILE=, or the number of workers)", n,
			    worker_nofile);
		}
		worker_listen(0, -1);
	} else if (!evtimer_pending(accept_resume_ev, NULL)) {
		if (worker_full_told) {
			worker_full_told = false;
			log_info("a connection ended: this worker accepts new ones again");
		}
		worker_listen(1, -1);
	}
}

static void
accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	if (!worker.stopping)
		worker_listen(worker_full ? -1 : 1, 1);
}

static void
accept_error_cb(struct evconnlistener *l, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		log_warnx("accept: %s; pausing new connections", strerror(err));
		for (size_t i = 0; i < worker.n_listeners; i++)
			evconnlistener_disable(worker.listeners[i]);
		struct timeval tv = { 0, WORKER_ACCEPT_PAUSE_MS * 1000 };
		evtimer_add(accept_resume_ev, &tv);
	} else if (err != EAGAIN && err != ECONNABORTED && err != EINTR) {
		log_warnx("accept: %s", strerror(err));
	}
}

/* Answers taken from the auth channel per system call: a recv per answer
 * and one more that found none (EAGAIN) was two calls per login. */
#define WORKER_AUTH_BATCH 8

static void
auth_channel_message(char *buf, size_t n)
{
	struct ipc_auth_result msg;
	struct ipc_users_policy policy;
	if (ipc_type(buf, n) == IPC_USERS_POLICY && ipc_users_policy_decode(buf, n, &policy)) {
		worker.users_policy = policy.flags;
		return;
	}
	if (!ipc_auth_result_decode(buf, n, &msg)) {
		log_warnx("malformed message from the auth process, ignored");
		return;
	}
	if (!lmtp_auth_result(&worker, &msg))
		login_auth_result(&worker, &msg);
}

static void
auth_channel_cb(evutil_socket_t fd, short what, void *arg)
{
	/* Only the pages an answer fills are ever touched. */
	static char bufs[WORKER_AUTH_BATCH][IPC_MAX_MSG];
	struct mmsghdr mm[WORKER_AUTH_BATCH];
	struct iovec iov[WORKER_AUTH_BATCH];
	for (int round = 0; round < 32; round++) {
		memset(mm, 0, sizeof(mm));
		for (int i = 0; i < WORKER_AUTH_BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof(bufs[i]);
			mm[i].msg_hdr.msg_iov = &iov[i];
			mm[i].msg_hdr.msg_iovlen = 1;
		}
		/* All that is queued, up to the batch, without waiting. */
		int got = recvmmsg(fd, mm, WORKER_AUTH_BATCH, MSG_DONTWAIT, NULL);
		if (got <= 0)
			return;
		for (int i = 0; i < got; i++) {
			if (mm[i].msg_len == 0)
				return;   /* the auth process went away: the master sees it */
			auth_channel_message(bufs[i], mm[i].msg_len);
		}
		if (got < WORKER_AUTH_BATCH)
			return;
	}
}

int
worker_auth_send(struct worker *w, const void *msg, size_t len)
{
	if (w->auth_q == NULL)
		return ipc_send(w->auth_fd, msg, len);
	return ipc_queue_send(w->auth_q, msg, len);
}

static void
control_cb(evutil_socket_t fd, short what, void *arg)
{
	static char buf[IPC_MAX_MSG];
	struct ipc_reload msg;
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n == 0) {
		log_warnx("master went away, closing sessions and exiting");
		session_close_all(&worker, "shutdown");
		lmtp_close_all(&worker);
		event_base_loopexit(worker.base, NULL);
		worker.stopping = true;
		return;
	}
	if (n > 0 && ipc_type(buf, (size_t)n) == IPC_LMTP_RESULT) {
		struct ipc_lmtp_result res;
		if (ipc_lmtp_result_decode(buf, (size_t)n, &res))
			(void)lmtp_master_result(&worker, &res);
		return;
	}
	if (n > 0 && ipc_type(buf, (size_t)n) == IPC_HANDOVER_DONE) {
		struct ipc_handover_done done;
		if (ipc_handover_done_decode(buf, (size_t)n, &done))
			session_handover_done(&worker, &done);
		return;
	}
	if (n < 0 || !ipc_reload_decode(buf, (size_t)n, &msg))
		return;
	struct config *next;
	char *error = NULL;
	if (config_parse(msg.path, msg.config, &next, &error) < 0) {
		log_warnx("reload: %s", error);
		free(error);
		return;
	}
	if (msg.cert_pem[0] != '\0' && msg.key_pem[0] != '\0') {
		/* New certificate: new connections use the new context; the
		 * old one lives on in the SSL objects of existing sessions. */
		SSL_CTX *ctx = tls_server_ctx_new(msg.cert_pem, msg.key_pem, next->tls_min_version, &error);
		secure_wipe(buf, (size_t)n);
		if (ctx == NULL) {
			log_warnx("reload: keeping the current TLS certificate: %s", error);
			free(error);
		} else {
			SSL_CTX_free(worker.ssl_ctx);
			worker.ssl_ctx = ctx;
		}
	}
	/* Sessions read settings through worker.config at each use, so the old
	 * one can go now. */
	config_free(worker.config);
	worker.config = next;
	store_maildir_trust_ctime = (enum store_trust_ctime)next->maildir_trust_ctime;
}

static void
sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	/* End every session without UPDATE: nothing is deleted (RFC 1939 §6). */
	worker.stopping = true;
	for (size_t i = 0; i < worker.n_listeners; i++)
		evconnlistener_disable(worker.listeners[i]);
	session_close_all(&worker, "shutdown");
	lmtp_close_all(&worker);
	event_base_loopexit(worker.base, NULL);
}

void
worker_main(struct child_env *env)
{
	char name[32];
	snprintf(name, sizeof(name), "popboxd-worker");
	prctl(PR_SET_NAME, name);
	snprintf(name, sizeof(name), "popboxd-worker-%u", env->slot);
	log_set_procname(name);

	for (unsigned i = 0; i < env->n_workers; i++) {
		close(env->auth_fds[i]);
		if (i != env->slot)
			close(env->worker_fds[i]);
	}

	worker.config = env->config;
	store_maildir_trust_ctime = (enum store_trust_ctime)env->config->maildir_trust_ctime;
	worker.slot = env->slot;
	worker.n_workers = env->n_workers;
	worker.auth_fd = env->worker_fds[env->slot];
	worker.control_fd = env->control_fd;
	session_buffers_new(&worker);
	worker.connection_ended = worker_check_capacity;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		rlim_t cap = rl.rlim_cur > POPBOXD_FDS_SPARE + POPBOXD_FDS_PER_SESSION ?
		    (rl.rlim_cur - POPBOXD_FDS_SPARE) / POPBOXD_FDS_PER_SESSION : 1;
		worker_capacity = cap < UINT_MAX ? (unsigned)cap : UINT_MAX;
		worker_nofile = (unsigned long long)rl.rlim_cur;
	}
	worker.ssl_ctx = env->ssl_ctx;
	worker.iplimit = env->iplimit;
	iplimit_reset_worker(worker.iplimit, worker.slot);
	metrics_clear_gauges();   /* the previous incarnation's sessions are gone */
	/* Request and session ids start at random points so that a late answer
	 * meant for a previous incarnation of this worker matches nothing. */
	uint64_t rnd[2] = { 0, 0 };
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		rnd[0] = rnd[1] = (uint64_t)getpid() << 20;
	worker.next_request = rnd[0] >> 1;
	worker.next_session = ((uint64_t)env->slot << 56) | (rnd[1] >> 16);

	/* RETR of a big message allocates and frees output chains of up to
	 * 256 KiB every loop round. With glibc's dynamic thresholds the top of
	 * the heap was given back (brk) and taken again each time: page
	 * faults and zeroed pages, which in this kind of VM cost more than the
	 * copying (server CPU per 1 MiB RETR ~2,000 us -> ~600 us). Keep up
	 * to 8 MiB of free heap per worker instead; blocks up to 1 MiB come
	 * from the heap. */
	mallopt(M_MMAP_THRESHOLD, 1 << 20);
	mallopt(M_TRIM_THRESHOLD, 8 << 20);
	/* A login builds the maildrop's message table on the store thread
	 * (100,000 messages: some 25 MB in small blocks) and the session's end
	 * frees it. The store thread's heap gave all but M_TOP_PAD (128 KiB)
	 * of that back to the kernel, so every login faulted it in again (and
	 * grew the heap with an mprotect a few pages at a time): two thirds
	 * of a warm 100,000-message login (75-81 -> 24-27 ms, bench/README.md).
	 * A worker keeps up to 32 MiB of free heap per arena instead: the
	 * memory its biggest maildrop needed stays with it. */
	mallopt(M_TOP_PAD, 32 << 20);
	/* The changelist folds an enable and a disable of the same event in one
	 * loop round into nothing: fewer epoll_ctl calls per command. */
	struct event_config *ecfg = event_config_new();
	event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	worker.base = event_base_new_with_config(ecfg);
	event_config_free(ecfg);
	if (worker.base == NULL)
		fatalx("event_base_new failed");
	accept_resume_ev = evtimer_new(worker.base, accept_resume_cb, NULL);
	worker.store_pool = store_pool_new(worker.base);

	worker.listeners = xcalloc(env->n_listeners, sizeof(*worker.listeners));
	listener_lmtp = xcalloc(env->n_listeners ? env->n_listeners : 1, sizeof(*listener_lmtp));
	for (size_t i = 0; i < env->n_listeners; i++) {
		struct listener_arg *la = xcalloc(1, sizeof(*la));
		la->w = &worker;
		la->tls = env->listeners[i].tls;
		la->lmtp = env->listeners[i].lmtp;
		listener_lmtp[i] = la->lmtp;
		/* Backlog 0: the socket already listens with the master's
		 * backlog (or systemd's). A negative value would make libevent
		 * call listen(fd, 128) again and shrink the accept queue to
		 * 128, which a connect storm overflows (bench/README.md). */
		worker.listeners[i] = evconnlistener_new(worker.base, accept_cb, la,
		    LEV_OPT_CLOSE_ON_EXEC, 0, env->listeners[i].fd);
		if (worker.listeners[i] == NULL)
			fatalx("cannot listen on %s", env->listeners[i].name);
		evconnlistener_set_error_cb(worker.listeners[i], accept_error_cb);
	}
	worker.n_listeners = env->n_listeners;

	worker.auth_ev = event_new(worker.base, worker.auth_fd, EV_READ | EV_PERSIST, auth_channel_cb, NULL);
	worker.auth_q = ipc_queue_new(worker.base, worker.auth_fd);
	{
		/* What users have of their own (CAPA): until the answer, say
		 * they may differ. */
		unsigned char pbuf[IPC_HEADER_SIZE + 8];
		const struct ipc_users_policy ask = { 0, 0 };
		worker.users_policy = IPC_POLICY_EXPIRE_DIFFERS | IPC_POLICY_DELAY_DIFFERS;
		(void)worker_auth_send(&worker, pbuf, ipc_users_policy_encode(pbuf, sizeof(pbuf), &ask));
	}
	event_add(worker.auth_ev, NULL);
	struct event *cev = event_new(worker.base, env->control_fd, EV_READ | EV_PERSIST, control_cb, NULL);
	event_add(cev, NULL);
	struct event *tev = evsignal_new(worker.base, SIGTERM, sigterm_cb, NULL);
	evsignal_add(tev, NULL);

	event_base_dispatch(worker.base);
	/* Free sessions whose destruction was scheduled by the shutdown. */
	event_base_loop(worker.base, EVLOOP_NONBLOCK);
	exit(0);
}
