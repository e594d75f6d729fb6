/* POP3 session I/O inside a worker: line framing with hard limits, the one
 * state setter, replies, streaming of message bodies with back-pressure, the
 * timers, STLS, close and the per-session log line. What a line means is the
 * session's handler's business (session.h). */
#include "server/session.h"
#include "server/devices.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/base64.h"
#include "common/log.h"
#include "server/iplimit.h"
#include "server/metrics.h"
#include "server/store_pool.h"

static void session_destroy_later(struct session *s, const char *reason);
static void session_read_enable(struct session *s, bool on);

static const char *
state_name(enum session_state st)
{
	switch (st) {
	case SESSION_AUTHORIZATION: return "AUTHORIZATION";
	case SESSION_AUTH_WAIT: return "AUTH-WAIT";
	case SESSION_SASL: return "SASL";
	case SESSION_MAILDROP_WAIT: return "MAILDROP-WAIT";
	case SESSION_TRANSACTION: return "TRANSACTION";
	case SESSION_UPDATE: return "UPDATE";
	case SESSION_CLOSING: return "CLOSING";
	case SESSION_HANDOVER: return "HANDOVER";
	case SESSION_RELAY: return "RELAY";
	}
	return "?";
}

/* Milliseconds of the coarse monotonic clock (a vDSO read, no system call;
 * a few ms of resolution is plenty for timeouts of seconds and minutes). */
static int64_t
session_clock_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * The idle or login timeout runs from the last activity. Every command and
 * every write of a stream is activity, so instead of moving the timer in
 * the loop's heap each time (an event_add per command), the activity's
 * time is noted and a timer of the same length left where it is: when it
 * fires, session_timer_cb adds it again for what is left after the last
 * activity. It is added anew only when its length changes (a new state).
 */
static void
session_timer_arm(struct session *s)
{
	const struct config *c = s->worker->config;
	unsigned secs;
	switch (s->state) {
	case SESSION_AUTH_WAIT: case SESSION_HANDOVER: secs = SESSION_AUTH_TIMEOUT_SECONDS; break;
	case SESSION_RELAY:
		/* The session process keeps the time; its end ends the relay. */
		evtimer_del(s->timer);
		return;
	case SESSION_TRANSACTION: case SESSION_UPDATE: case SESSION_MAILDROP_WAIT:
		secs = c->idle_timeout;
		break;
	default: secs = c->login_timeout; break;
	}
	s->timer_from = session_clock_ms();
	if (secs == s->timer_secs && evtimer_pending(s->timer, NULL))
		return;
	s->timer_secs = secs;
	struct timeval tv = { .tv_sec = secs };
	evtimer_add(s->timer, &tv);
}

/* The metrics' session gauge a state counts under; -1: none (closing). */
static int
metrics_state(enum session_state state)
{
	switch (state) {
	case SESSION_AUTHORIZATION:
	case SESSION_AUTH_WAIT:
	case SESSION_SASL:
		return METRICS_STATE_AUTHORIZATION;
	case SESSION_MAILDROP_WAIT:
	case SESSION_TRANSACTION:
		return METRICS_STATE_TRANSACTION;
	case SESSION_UPDATE:
		return METRICS_STATE_UPDATE;
	default:
		return -1;
	}
}

static void
metrics_state_move(enum session_state from, enum session_state to)
{
	int a = metrics_state(from), b = metrics_state(to);
	if (a == b)
		return;
	if (a >= 0)
		METRICS_ADD(sessions[a], -1);
	if (b >= 0)
		METRICS_INC(sessions[b]);
}

void
session_enter_state(struct session *s, enum session_state state)
{
	log_debug("session %016llx: %s -> %s", (unsigned long long)s->id, state_name(s->state),
	    state_name(state));
	metrics_state_move(s->state, state);
	s->state = state;
	session_timer_arm(s);
}

/*
 * Plain sockets write a command's reply in the loop round that read the
 * command (session_flush) instead of arming EPOLLOUT and writing it in the
 * next round: that round cost an epoll_wait and two epoll_ctl per command.
 * The write event is kept off while nothing is queued, so every writer
 * goes through session_output(), which turns it back on before adding;
 * with the epoll changelist an on and an off in one round cost nothing.
 */
struct evbuffer *
session_output(struct session *s)
{
	if (!(bufferevent_get_enabled(s->bev) & EV_WRITE))
		bufferevent_enable(s->bev, EV_WRITE);
	return bufferevent_get_output(s->bev);
}

/* Write what is queued on a plain socket now, in one writev. */
static void
session_write_now(struct session *s)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	size_t len = evbuffer_get_length(out);
	if (len > 0 && len < SESSION_OUTPUT_HIGH) {
		/* A socket bufferevent keeps its output's front frozen outside
		 * its own write callback; thaw it for this one write. */
		evbuffer_unfreeze(out, 1);
		(void)evbuffer_write(out, bufferevent_getfd(s->bev));
		evbuffer_freeze(out, 1);
	}
}

/* Also after the greeting and after the auth process or the store thread
 * answered (session_resume): each of those replies cost a loop round
 * (epoll_ctl, epoll_wait, writev, epoll_ctl) when left to the write event. */
void
session_flush(struct session *s)
{
	/* TLS and the STLS filter write through OpenSSL; a stream refills from
	 * the write callback; a closing session waits for that callback. */
	if (s->freed_pending || s->tls || s->streaming || s->producer != NULL ||
	    s->state == SESSION_CLOSING || bufferevent_get_underlying(s->bev) != NULL)
		return;
	session_write_now(s);
	struct evbuffer *out = bufferevent_get_output(s->bev);
	/* Anything left (a full socket, an error) stays with the write event,
	 * which reports errors through the event callback as before. */
	if (evbuffer_get_length(out) == 0 && (bufferevent_get_enabled(s->bev) & EV_WRITE))
		bufferevent_disable(s->bev, EV_WRITE);
}

static void
session_write(struct session *s, const void *data, size_t len)
{
	if (s->freed_pending)
		return;
	evbuffer_add(session_output(s), data, len);
	s->bytes_out += len;
}

void
session_reply(struct session *s, const char *fmt, ...)
{
	/* RFC 1939 §3: responses up to 512 octets including CRLF. */
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n > sizeof(line) - 3)
		n = (int)sizeof(line) - 3;
	line[n++] = '\r';
	line[n++] = '\n';
	session_write(s, line, (size_t)n);
}

static void
session_log_end(struct session *s)
{
	/* The logged-in user, else the name the client gave. */
	const char *name = s->user != NULL ? s->user : s->login_name;
	char user[64] = "-";
	if (name != NULL)
		str_sanitize(user, sizeof(user), name, strlen(name));
	/* A balancer's health check (greeting, QUIT) every few seconds is not
	 * news; a connection without a client address that said anything
	 * else is (commands.c clears probe). */
	const char *end = s->end_reason ? s->end_reason : "closed";
	char id[17];
	snprintf(id, sizeof(id), "%016llx", (unsigned long long)s->id);
	SSL *ssl = s->tls && s->bev != NULL ? bufferevent_openssl_get_ssl(s->bev) : NULL;
	uint64_t ms = (monotonic_us() - s->started_us) / 1000;
	/* log_format = json / log_target = journal: the same facts as fields
	 * with stable names (popboxd(8), LOGGING). */
	const struct log_field fields[] = {
		LOG_STR("event", "session_end"), LOG_STR("session", id),
		LOG_STR("user", name != NULL ? user : ""), LOG_STR("peer", s->peer),
		LOG_STR("proxy_peer", s->proxy_peer),
		LOG_STR("tls", ssl != NULL ? SSL_get_version(ssl) : ""),
		LOG_STR("mechanism", s->user != NULL ? metrics_mech_name(s->login_mech) : ""),
		LOG_NUM("retr", s->retr_count), LOG_NUM("top", s->top_count),
		LOG_NUM("dele", s->dele_count), LOG_NUM("bytes", s->bytes_out),
		LOG_NUM("duration_ms", ms), LOG_STR("end", end),
	};
	log_event(s->probe, fields, N_ELEMENTS(fields),
	    "session %016llx: user=%s peer=%s retr=%u top=%u dele=%u bytes=%llu end=%s",
	    (unsigned long long)s->id, user, s->peer, s->retr_count, s->top_count,
	    s->dele_count, (unsigned long long)s->bytes_out, end);
}

/* The pending maildrop job, if any, finishes without us (store_pool.h). */
static void
session_detach_job(struct session *s)
{
	if (s->store_job != NULL) {
		s->store_job->arg = NULL;
		s->store_job = NULL;
	}
}

/* Stop the message or listing being sent, if any. */
static void
session_stream_stop(struct session *s)
{
	if (s->streaming) {
		close(s->stream.fd);
		s->streaming = false;
	}
	s->producer = NULL;
}

static void
session_free(struct session *s)
{
	struct worker *w = s->worker;
	session_log_end(s);
	int gauge = metrics_state(s->state);
	if (gauge >= 0)
		METRICS_ADD(sessions[gauge], -1);
	if (!s->relayed)
		METRICS_ADD(bytes_sent, s->bytes_out);
	s->handler->end(s);
	/* A job submitted after the session was condemned must not call back
	 * into freed memory either. */
	session_detach_job(s);
	if (s->ip_counted)
		iplimit_add(w->iplimit, w->slot, s->peer_ip, -1);
	if (s->total_counted)
		iplimit_total_add(w->iplimit, w->slot, -1);
	session_stream_stop(s);
	devices_free(s->devices);
	if (s->store != NULL)
		s->store->backend->close(s->store);   /* no UPDATE: nothing removed */
	free(s->deleted);
	free(s->view);
	free(s->retrieved);
	free(s->device);
	if (s->relay != NULL)
		bufferevent_free(s->relay);   /* the session process sees the end */
	if (s->relay_fd >= 0)
		close(s->relay_fd);
	free(s->handover_device);
	if (s->rev != NULL)
		event_free(s->rev);   /* deleted already: before the socket closes */
	if (s->bev != NULL)
		bufferevent_free(s->bev);
	event_free(s->timer);
	if (s->linger != NULL)
		event_free(s->linger);
	if (s->all_prev)
		s->all_prev->all_next = s->all_next;
	else
		w->all = s->all_next;
	if (s->all_next)
		s->all_next->all_prev = s->all_prev;
	w->sessions--;
	uint64_t id = s->id;
	free(s);
	if (w->session_freed != NULL)
		w->session_freed(w, id);
	if (w->connection_ended != NULL)
		w->connection_ended(w);
	if (w->exit_when_idle && w->sessions == 0)
		event_base_loopexit(w->base, NULL);
}

static void
session_destroy_cb(evutil_socket_t fd, short what, void *arg)
{
	session_free(arg);
}

/* Never free a session inside its own callback (style.md §9): stop all
 * activity now, free from a fresh event loop iteration. */
static void
session_destroy_later(struct session *s, const char *reason)
{
	if (s->freed_pending)
		return;
	s->freed_pending = true;
	if (s->end_reason == NULL)
		s->end_reason = reason;
	session_detach_job(s);
	bufferevent_disable(s->bev, EV_READ | EV_WRITE);
	session_read_enable(s, false);
	if (s->relay != NULL)
		bufferevent_disable(s->relay, EV_READ | EV_WRITE);
	evtimer_del(s->timer);
	session_stream_stop(s);
	struct timeval zero = { 0, 0 };
	if (event_base_once(s->worker->base, -1, EV_TIMEOUT, session_destroy_cb, s, &zero) < 0)
		fatalx("event_base_once failed");
}

/* Bytes queued for this client anywhere: with STLS, TLS records may sit in
 * the plain bufferevent under the TLS filter. */
static size_t
session_output_pending(struct session *s)
{
	size_t n = evbuffer_get_length(bufferevent_get_output(s->bev));
	struct bufferevent *under = bufferevent_get_underlying(s->bev);
	if (under != NULL)
		n += evbuffer_get_length(bufferevent_get_output(under));
	return n;
}

static void
session_linger_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	if (s->freed_pending)
		return;
	if (session_output_pending(s) == 0) {
		session_destroy_later(s, NULL);
		return;
	}
	/* The filter has handed everything down; wait for the socket. The idle
	 * timer still bounds how long a non-reading client can keep us. */
	struct timeval tv = { 0, 20 * 1000 };
	if (s->linger == NULL)
		s->linger = evtimer_new(s->worker->base, session_linger_cb, s);
	evtimer_add(s->linger, &tv);
}

static void
session_close_if_flushed(struct session *s)
{
	/* A plain session's last reply (QUIT's) goes out now, not in another
	 * loop round through the write event. */
	if (!s->freed_pending && !s->tls && !s->streaming && s->producer == NULL &&
	    bufferevent_get_underlying(s->bev) == NULL)
		session_write_now(s);
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) != 0)
		return;   /* the write callback comes back when it is */
	if (s->tls && !s->tls_shutdown) {
		/* Say goodbye properly (close_notify), so the client can tell
		 * the end of the session from a truncation attack. */
		SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
		s->tls_shutdown = true;
		if (ssl != NULL) {
			SSL_shutdown(ssl);
			ERR_clear_error();
		}
	}
	if (bufferevent_get_underlying(s->bev) == NULL)
		session_destroy_later(s, NULL);
	else
		session_linger_cb(-1, 0, s);
}

void
session_close_after_reply(struct session *s, const char *reason)
{
	if (s->end_reason == NULL)
		s->end_reason = reason;
	session_enter_state(s, SESSION_CLOSING);
	/* Unlock the maildrop before the client can see our last reply, so
	 * that it may log in again at once (after QUIT, UPDATE is done). */
	session_stream_stop(s);
	if (s->store != NULL) {
		s->store->backend->close(s->store);
		s->store = NULL;
	}
	session_read_enable(s, false);
	/* Called back when everything queued has been written. */
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
	session_close_if_flushed(s);
}

void
session_buffers_new(struct worker *w)
{
	w->read_buf = xmalloc(SESSION_READ_CHUNK);
	w->line_buf = xmalloc(SESSION_MAX_SASL_LINE + 1);
	w->send_buf = xmalloc(SESSION_SEND_BUF);
}

void
session_buffers_free(struct worker *w)
{
	free(w->read_buf);
	free(w->line_buf);
	free(w->send_buf);
	w->read_buf = w->line_buf = w->send_buf = NULL;
}

void
session_close_all(struct worker *w, const char *reason)
{
	for (struct session *s = w->all; s != NULL; s = s->all_next)
		if (!s->freed_pending) {
			s->end_reason = reason;
			session_destroy_later(s, reason);
		}
}

/* One read of the message being streamed into the worker's read buffer:
 * SESSION_READ_CHUNK, or what is left of a known length. A message of
 * unknown length (a Maildir file: its size is not looked up, which saves
 * an fstat per message) ends at the first short read, which for a regular
 * file means its end: a small message costs one read. -1 on error. */
static ssize_t
session_stream_read(struct session *s)
{
	size_t want = SESSION_READ_CHUNK;
	if (s->stream.length >= 0 && (off_t)want > s->stream.length - s->stream_pos)
		want = (size_t)(s->stream.length - s->stream_pos);
	if (want == 0 || s->stream_eof)
		return 0;
	ssize_t n;
	do {
		n = pread(s->stream.fd, s->worker->read_buf, want, s->stream.offset + s->stream_pos);
	} while (n < 0 && errno == EINTR);
	if (n >= 0 && (size_t)n < want && s->stream.length < 0)
		s->stream_eof = true;
	return n;
}

/* Fill the output buffer from the message file until it is full enough, the
 * message ends, or (TOP) the line limit is reached. Returns false when the
 * session was ended because the file could not be read. */
static bool
session_stream_fill(struct session *s)
{
	struct evbuffer *out = session_output(s);
	char *buf = s->worker->read_buf;

	while (s->streaming && evbuffer_get_length(out) < SESSION_OUTPUT_HIGH) {
		ssize_t n = s->stream_primed;
		s->stream_primed = -1;
		if (n < 0)
			n = session_stream_read(s);
		if (n < 0) {
			/* Half a message was sent; there is no way to say -ERR now. */
			log_warn("session %016llx: reading message", (unsigned long long)s->id);
			session_destroy_later(s, "read-error");
			return false;
		}
		struct evbuffer_iovec v;
		size_t need = n > 0 ? WIRE_ENCODE_MAX((size_t)n) : WIRE_FINISH_MAX + 3;
		if (evbuffer_reserve_space(out, (ev_ssize_t)need, &v, 1) < 1)
			fatalx("evbuffer_reserve_space failed");
		size_t produced = 0;
		if (n > 0) {
			produced = wire_encode(&s->enc, buf, (size_t)n, v.iov_base);
			s->stream_pos += n;
		}
		if (n == 0 || s->enc.done) {
			produced += wire_encode_finish(&s->enc, (char *)v.iov_base + produced);
			memcpy((char *)v.iov_base + produced, ".\r\n", 3);
			produced += 3;
			session_stream_stop(s);
		}
		v.iov_len = produced;
		evbuffer_commit_space(out, &v, 1);
		s->bytes_out += produced;
	}
	return true;
}

bool
session_stream_open(struct session *s, const struct store_stream *st)
{
	s->stream = *st;
	s->stream_pos = 0;
	s->stream_eof = false;
	s->stream_primed = session_stream_read(s);
	if (s->stream_primed < 0) {
		int saved = errno;
		close(s->stream.fd);
		s->stream.fd = -1;
		errno = saved;
		return false;
	}
	return true;
}

/*
 * A message that came whole in the first read (most mail) is answered on a
 * plain connection that has nothing queued with one send from the worker's
 * send buffer: status line, body and terminator, bypassing the output
 * buffer (its chains, and turning the write event on and off, cost about as
 * much as the send). What the socket does not take is queued in the output
 * buffer, whose write event sends the rest or reports the error as for any
 * other reply. false: not such a message or connection, nothing done.
 */
static bool
session_stream_whole(struct session *s, const char *status, size_t status_len)
{
	ssize_t n = s->stream_primed;
	bool whole = s->stream_eof || (s->stream.length >= 0 && n == s->stream.length);
	if (n < 0 || !whole || s->tls || bufferevent_get_underlying(s->bev) != NULL ||
	    evbuffer_get_length(bufferevent_get_output(s->bev)) > 0)
		return false;
	char *out = s->worker->send_buf;
	memcpy(out, status, status_len);
	size_t len = status_len;
	s->stream_primed = -1;
	s->stream_pos = n;
	len += wire_encode(&s->enc, s->worker->read_buf, (size_t)n, out + len);
	len += wire_encode_finish(&s->enc, out + len);
	memcpy(out + len, ".\r\n", 3);
	len += 3;
	s->bytes_out += len;
	session_stream_stop(s);
	ssize_t sent;
	do {
		sent = send(bufferevent_getfd(s->bev), out, len, MSG_NOSIGNAL);
	} while (sent < 0 && errno == EINTR);
	if (sent < 0)
		sent = 0;   /* full, or an error the write event will report */
	if ((size_t)sent < len && evbuffer_add(session_output(s), out + sent, len - (size_t)sent) < 0)
		fatalx("evbuffer_add failed");
	return true;
}

void
session_stream_start(struct session *s, int64_t top_lines, const char *status, size_t status_len)
{
	s->streaming = true;
	wire_encoder_init(&s->enc, top_lines);
	wire_encoder_set_from_quoting(&s->enc, s->stream.from_quoting);
	if (session_stream_whole(s, status, status_len))
		return;
	session_write(s, status, status_len);
	session_stream_fill(s);
}

/* Let the producer add to the output until the high mark or its end. */
static void
session_produce_fill(struct session *s)
{
	struct evbuffer *out = session_output(s);
	while (s->producer != NULL && evbuffer_get_length(out) < SESSION_OUTPUT_HIGH) {
		size_t before = evbuffer_get_length(out);
		if (s->producer(s, out))
			s->producer = NULL;
		s->bytes_out += evbuffer_get_length(out) - before;
	}
}

void
session_produce_start(struct session *s, session_fill_fn *fill)
{
	s->producer = fill;
	session_produce_fill(s);
}

void
session_bad_line(struct session *s, const char *msg)
{
	/* One status line per command line, also for the last one. */
	if (++s->bad_commands >= s->worker->config->max_bad_commands) {
		session_reply(s, "-ERR %s; too many bad commands, closing connection", msg);
		session_close_after_reply(s, "bad-commands");
		return;
	}
	session_reply(s, "-ERR %s", msg);
}

/* Whether the session takes a command now: not waiting for the auth
 * process or the store thread, not streaming a message or a listing,
 * output not backed up. */
static bool
session_takes_lines(struct session *s)
{
	return !s->freed_pending && !s->streaming && s->producer == NULL &&
	    (s->state == SESSION_AUTHORIZATION || s->state == SESSION_TRANSACTION ||
	    s->state == SESSION_SASL) &&
	    evbuffer_get_length(bufferevent_get_output(s->bev)) < SESSION_OUTPUT_HIGH;
}

/* Hand the line in the worker's line buffer (len bytes and its LF taken
 * off) to the handler. */
static void
session_line(struct session *s, size_t len)
{
	char *line = s->worker->line_buf;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	line[len] = '\0';
	session_timer_arm(s);
	if (memchr(line, '\0', len) != NULL) {
		secure_wipe(line, len);
		s->handler->input(s, SESSION_INPUT_NUL, NULL, 0);
		return;
	}
	s->handler->input(s, SESSION_INPUT_LINE, line, len);
	secure_wipe(line, len);   /* it may have been a password */
}

static size_t
session_max_line(const struct session *s)
{
	return s->state == SESSION_SASL ? SESSION_MAX_SASL_LINE : SESSION_MAX_LINE;
}

/* Frame complete lines and hand them to the handler while the session
 * takes them. */
static void
session_process_lines(struct session *s)
{
	/* Looked up each time: STLS replaces the bufferevent. */
	while (session_takes_lines(s)) {
		struct evbuffer *in = bufferevent_get_input(s->bev);
		if (evbuffer_get_length(in) == 0)
			return;
		size_t max = session_max_line(s);
		size_t eol_len;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (p.pos < 0) {
			size_t len = evbuffer_get_length(in);
			/* No end of line yet: an over-long line is consumed as it
			 * comes and answered once when it ends. */
			if (s->discarding || len >= max) {
				evbuffer_drain(in, len);
				s->discarding = true;
			}
			return;
		}
		size_t len = (size_t)p.pos;
		if (s->discarding || len + 1 > max) {
			evbuffer_drain(in, len + 1);
			s->discarding = false;
			session_timer_arm(s);
			s->handler->input(s, SESSION_INPUT_TOO_LONG, NULL, 0);
			continue;
		}
		evbuffer_remove(in, s->worker->line_buf, len + 1);
		session_line(s, len);
	}
}

/* Bytes just received into buf, the input buffer being empty: the first
 * line, if complete and the session takes it, goes to the handler straight
 * from buf, without passing through the input buffer (a copy in, a search
 * and a copy out per command). What follows it is queued in the input
 * first, as the handler may reuse buf (RETR reads the message into it). */
static void
session_received(struct session *s, const char *buf, size_t n)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	const char *nl;
	if (!s->discarding && session_takes_lines(s) && (nl = memchr(buf, '\n', n)) != NULL &&
	    (size_t)(nl - buf) + 1 <= session_max_line(s)) {
		size_t len = (size_t)(nl - buf);
		memcpy(s->worker->line_buf, buf, len);
		size_t rest = n - len - 1;
		if (rest > 0 && evbuffer_add(in, nl + 1, rest) < 0)
			fatalx("evbuffer_add failed");
		session_line(s, len);
		return;
	}
	if (evbuffer_add(in, buf, n) < 0)
		fatalx("evbuffer_add failed");
}

/*
 * A plain connection is read here rather than by its bufferevent: libevent
 * asks the socket how much it holds (ioctl(FIONREAD)) before every readv,
 * one system call more per command (a tenth of a 4 KiB RETR's). One recv of
 * up to what the input may still take (SESSION_INPUT_HIGH) per readiness
 * into the bufferevent's input, which the framing reads as before; reading
 * pauses at the high mark and while read_on is off, like the bufferevent's.
 */
static void
session_read_update(struct session *s)
{
	if (s->rev == NULL)
		return;
	bool want = s->read_on && !s->freed_pending &&
	    evbuffer_get_length(bufferevent_get_input(s->bev)) < SESSION_INPUT_HIGH;
	if (want == s->rev_added)
		return;
	if (want)
		event_add(s->rev, NULL);
	else
		event_del(s->rev);
	s->rev_added = want;
}

/* Read from the client (on) or not: the own read event or the
 * bufferevent's. */
static void
session_read_enable(struct session *s, bool on)
{
	if (s->rev == NULL) {
		if (on)
			bufferevent_enable(s->bev, EV_READ);
		else
			bufferevent_disable(s->bev, EV_READ);
		return;
	}
	s->read_on = on;
	session_read_update(s);
}

void
session_process_input(struct session *s)
{
	session_process_lines(s);
	/* The input may have dropped below the high mark. */
	session_read_update(s);
}

void
session_resume(struct session *s)
{
	session_process_input(s);
	session_flush(s);
}

static void
session_read_cb(struct bufferevent *bev, void *arg)
{
	session_resume(arg);
}

static void
session_recv_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	struct evbuffer *in = bufferevent_get_input(s->bev);
	size_t have = evbuffer_get_length(in);
	if (s->freed_pending || have >= SESSION_INPUT_HIGH) {
		session_read_update(s);
		return;
	}
	size_t room = SESSION_INPUT_HIGH - have;
	if (room > SESSION_READ_CHUNK)
		room = SESSION_READ_CHUNK;
	ssize_t n = recv(fd, s->worker->read_buf, room, 0);
	if (n > 0) {
		if (have == 0)
			session_received(s, s->worker->read_buf, (size_t)n);
		else if (evbuffer_add(in, s->worker->read_buf, (size_t)n) < 0)
			fatalx("evbuffer_add failed");
		session_resume(s);
		session_read_update(s);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	/* The end or an error, as the bufferevent would report them. */
	if (n < 0)
		session_destroy_later(s, s->state == SESSION_CLOSING ? NULL : "connection-error");
	else
		session_destroy_later(s, s->state == SESSION_CLOSING ? NULL : "disconnected");
}

static void session_handover_send(struct session *s);

static void
session_write_cb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	if (s->freed_pending)
		return;
	if (s->state == SESSION_HANDOVER) {
		if (s->handover_flushing && evbuffer_get_length(bufferevent_get_output(s->bev)) == 0) {
			s->handover_flushing = false;
			session_handover_send(s);
		}
		return;
	}
	session_timer_arm(s);  /* the client is reading: not idle */
	if (s->state == SESSION_CLOSING) {
		session_close_if_flushed(s);
		return;
	}
	if (s->streaming && !session_stream_fill(s))
		return;
	if (s->producer != NULL)
		session_produce_fill(s);
	if (!s->streaming && s->producer == NULL)
		session_process_input(s);
}

static void
session_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	if ((what & BEV_EVENT_CONNECTED) && s->tls && !s->tls_done) {
		/* the TLS handshake (implicit TLS or after STLS) completed */
		s->tls_done = true;
		METRICS_INC(tls_handshakes);
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		if (ssl != NULL && SSL_session_reused(ssl))
			METRICS_INC(tls_resumed);
		return;
	}
	if (s->tls && !s->tls_done && (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
		s->tls_done = true;   /* counted once */
		METRICS_INC(tls_failed);
	}
	if (what & BEV_EVENT_EOF)
		session_destroy_later(s, s->state == SESSION_CLOSING ? NULL : "disconnected");
	else if (what & BEV_EVENT_ERROR) {
		unsigned long e;
		bool tls_error = false;
		while (s->tls && (e = bufferevent_get_openssl_error(bev)) != 0) {
			char buf[160];
			ERR_error_string_n(e, buf, sizeof(buf));
			log_info("session %016llx: TLS error from %s: %s", (unsigned long long)s->id, s->peer, buf);
			tls_error = true;
		}
		session_destroy_later(s, s->state == SESSION_CLOSING ? NULL :
		    tls_error ? "tls-error" : "connection-error");
	}
}

static void
session_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	/* Activity since the timer was added: the timeout runs from there. */
	int64_t left = s->timer_from + (int64_t)s->timer_secs * 1000 - session_clock_ms();
	if (left > 0) {
		struct timeval tv = { .tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000 };
		evtimer_add(s->timer, &tv);
		return;
	}
	if (s->state == SESSION_AUTH_WAIT) {
		s->handler->auth_timeout(s);
		return;
	}
	if (s->state == SESSION_HANDOVER) {
		log_warnx("session %016llx: no answer from the master to the handover",
		    (unsigned long long)s->id);
		session_destroy_later(s, "handover-timeout");
		return;
	}
	/* RFC 1939 §3: on the autologout timer, close without a response and
	 * without entering UPDATE. */
	session_destroy_later(s, s->state == SESSION_TRANSACTION ? "idle-timeout" : "login-timeout");
}

void
session_starttls(struct session *s)
{
	struct worker *w = s->worker;
	SSL *ssl = SSL_new(w->ssl_ctx);
	if (ssl == NULL) {
		session_destroy_later(s, "tls-error");
		return;
	}
	/* RFC 2595 §4 / CVE-2011-0411: whatever the client pipelined after STLS
	 * was sent in clear and must not be executed after the handshake. */
	struct evbuffer *in = bufferevent_get_input(s->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	/* From now on the filter reads through the plain bufferevent. */
	if (s->rev != NULL) {
		event_free(s->rev);
		s->rev = NULL;
	}
	/* The +OK is already in the plain bufferevent's output and goes out
	 * before any TLS record the filter writes behind it. */
	struct bufferevent *tls = bufferevent_openssl_filter_new(w->base, s->bev, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (tls == NULL) {
		SSL_free(ssl);
		session_destroy_later(s, "tls-error");
		return;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
	s->bev = tls;
	s->tls = true;
	bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, SESSION_INPUT_HIGH);
	bufferevent_setwatermark(s->bev, EV_WRITE, SESSION_OUTPUT_HIGH / 2, 0);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

struct ssl_st *
session_ssl(const struct session *s)
{
	return s->tls ? bufferevent_openssl_get_ssl(s->bev) : NULL;
}

static bool
addr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
			return in6->sin6_addr.s6_addr[12] == 127;
	}
	return false;
}

/* The bare address of sa (ip) and "host:port" (hostport). */
static void
addr_format(const struct sockaddr *sa, int salen, char ip[48], char hostport[64])
{
	char host[NI_MAXHOST], serv[NI_MAXSERV];
	if (getnameinfo(sa, (socklen_t)salen, host, sizeof(host), serv, sizeof(serv),
	    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(host, sizeof(host), "unknown");
		snprintf(serv, sizeof(serv), "0");
	}
	snprintf(ip, 48, "%.46s", host);
	if (strchr(host, ':'))
		snprintf(hostport, 64, "[%.46s]:%.8s", host, serv);
	else
		snprintf(hostport, 64, "%.46s:%.8s", host, serv);
}

/* The client's "host:port" and bare address, for logs and limits; with
 * unknown, sa is the load balancer's and the client is
 * SESSION_PEER_UNKNOWN: its own key for the penalty and the limits, and
 * not loopback, whatever the balancer's address is. */
static void
session_peer_set(struct session *s, const struct sockaddr *sa, int salen, bool unknown)
{
	char via_ip[48], via[64];
	if (!unknown) {
		addr_format(sa, salen, s->peer_ip, s->peer);
		s->loopback = addr_is_loopback(sa);
		return;
	}
	addr_format(sa, salen, via_ip, via);
	s->probe = true;
	snprintf(s->peer_ip, sizeof(s->peer_ip), "%s", SESSION_PEER_UNKNOWN);
	snprintf(s->peer, sizeof(s->peer), "%s-via-%s", SESSION_PEER_UNKNOWN, via);
	s->loopback = false;
}

/* The bufferevent of fd: TLS from the first byte on a TLS listener. False
 * when it cannot be made; fd is still open then. */
static bool
session_bev_new(struct session *s, int fd)
{
	struct worker *w = s->worker;
	if (s->tls_listener && w->ssl_ctx != NULL) {
		SSL *ssl = SSL_new(w->ssl_ctx);
		if (ssl == NULL)
			return false;
		s->bev = bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
		    BEV_OPT_CLOSE_ON_FREE);
		s->tls = true;
	} else {
		s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (s->bev == NULL)
		return false;
	if (s->tls) {
		bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
		return true;
	}
	/* libevent writes at most 16 KiB per writev by default: a 1 MiB
	 * RETR took 64 loop rounds (epoll_wait + writev each). Let one
	 * writev take whatever is queued, up to the output high mark. */
	bufferevent_set_max_single_write(s->bev, SESSION_OUTPUT_HIGH);
	/* We read the socket ourselves (session_recv_cb). A socket
	 * bufferevent freezes the end of its input outside its own reads;
	 * it never reads this one (until STLS, when it freezes and thaws
	 * around each of its reads again). */
	s->rev = event_new(s->worker->base, fd, EV_READ | EV_PERSIST, session_recv_cb, s);
	if (s->rev == NULL)
		fatalx("event_new failed");
	evbuffer_unfreeze(bufferevent_get_input(s->bev), 0);
	return true;
}

/* Count the connection against max_connections and max_connections_per_ip;
 * over either, answer and close, and return false. */
static bool
session_admit(struct session *s)
{
	struct worker *w = s->worker;
	/* Counted across workers when the shared table exists; else each
	 * worker takes its share. */
	iplimit_total_add(w->iplimit, w->slot, 1);
	s->total_counted = true;
	bool over = w->iplimit != NULL ? iplimit_total(w->iplimit) > w->config->max_connections
	    : w->sessions > (w->config->max_connections + w->n_workers - 1) / w->n_workers;
	if (w->config->max_connections > 0 && over) {
		METRICS_INC(refused[METRICS_REFUSED_MAX_CONNECTIONS]);
		session_reply(s, "-ERR [SYS/TEMP] Too many connections, try again later");
		session_close_after_reply(s, "too-many-connections");
		return false;
	}
	if (w->config->max_connections_per_ip > 0) {
		if (iplimit_count(w->iplimit, s->peer_ip) >= w->config->max_connections_per_ip) {
			METRICS_INC(refused[METRICS_REFUSED_MAX_CONNECTIONS_PER_IP]);
			log_info("session %016llx: refused %s: max_connections_per_ip (%u) reached",
			    (unsigned long long)s->id, s->peer, w->config->max_connections_per_ip);
			session_reply(s, "-ERR [SYS/TEMP] Too many connections from your address, try again later");
			session_close_after_reply(s, "too-many-connections-from-address");
			return false;
		}
		iplimit_add(w->iplimit, w->slot, s->peer_ip, 1);
		s->ip_counted = true;
	}
	return true;
}

static void
session_open(struct worker *w, int fd, const struct sockaddr *sa, int salen, bool unknown,
    const struct sockaddr *via, int vialen, bool tls_listener, const struct session_handler *handler)
{
	struct session *s = xcalloc(1, sizeof(*s));
	int one = 1;
	char via_ip[48];

	s->started_us = monotonic_us();
	if (via != NULL)
		addr_format(via, vialen, via_ip, s->proxy_peer);
	else if (unknown)
		addr_format(sa, salen, via_ip, s->proxy_peer);

	s->worker = w;
	s->handler = handler;
	s->relay_fd = -1;
	s->id = ++w->next_session;
	s->tls_listener = tls_listener;
	session_peer_set(s, sa, salen, unknown);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (!session_bev_new(s, fd)) {
		close(fd);
		free(s);
		return;
	}
	s->timer = evtimer_new(w->base, session_timer_cb, s);
	s->all_next = w->all;
	if (w->all)
		w->all->all_prev = s;
	w->all = s;
	w->sessions++;
	bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
	if (s->rev == NULL)   /* else session_recv_cb keeps to the mark */
		bufferevent_setwatermark(s->bev, EV_READ, 0, SESSION_INPUT_HIGH);
	bufferevent_setwatermark(s->bev, EV_WRITE, SESSION_OUTPUT_HIGH / 2, 0);
	bufferevent_enable(s->bev, EV_WRITE);
	session_read_enable(s, true);
	s->state = SESSION_AUTHORIZATION;
	METRICS_INC(accepted);
	METRICS_INC(sessions[METRICS_STATE_AUTHORIZATION]);
	session_timer_arm(s);
	log_debug("session %016llx: connect from %s", (unsigned long long)s->id, s->peer);
	if (session_admit(s)) {
		handler->start(s);
		session_flush(s);   /* the greeting */
	}
}

void
session_create(struct worker *w, int fd, const struct sockaddr *sa, int salen, bool tls_listener,
    const struct session_handler *handler)
{
	session_open(w, fd, sa, salen, false, NULL, 0, tls_listener, handler);
}

void
session_create_via(struct worker *w, int fd, const struct sockaddr *sa, int salen,
    const struct sockaddr *via, int vialen, bool tls_listener,
    const struct session_handler *handler)
{
	session_open(w, fd, sa, salen, false, via, vialen, tls_listener, handler);
}

void
session_create_unknown(struct worker *w, int fd, const struct sockaddr *via, int vialen,
    bool tls_listener, const struct session_handler *handler)
{
	session_open(w, fd, via, vialen, true, NULL, 0, tls_listener, handler);
}

/* --- per-user session processes (docs/DESIGN.md "A process per user
 * session") ------------------------------------------------------------ */

struct session *
session_adopt(struct worker *w, int fd, const struct session_origin *o, const void *input,
    size_t input_len, const struct session_handler *handler)
{
	struct session *s = xcalloc(1, sizeof(*s));
	s->worker = w;
	s->handler = handler;
	s->relay_fd = -1;
	s->started_us = monotonic_us();   /* the duration of this part of the session */
	s->id = o->id;
	s->login_mech = o->mech;
	s->relayed = o->tls;
	snprintf(s->peer, sizeof(s->peer), "%s", o->peer);
	snprintf(s->peer_ip, sizeof(s->peer_ip), "%s", o->peer_ip);
	s->loopback = o->loopback;
	/* The worker in front holds the TLS state (s->tls is about this
	 * descriptor, which carries plaintext). */
	s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		close(fd);
		free(s);
		return NULL;
	}
	bufferevent_set_max_single_write(s->bev, SESSION_OUTPUT_HIGH);
	if (input_len > 0) {
		/* A socket bufferevent keeps the end of its input frozen outside
		 * its own reads. */
		struct evbuffer *in = bufferevent_get_input(s->bev);
		evbuffer_unfreeze(in, 0);
		if (evbuffer_add(in, input, input_len) < 0)
			fatalx("evbuffer_add failed");
		evbuffer_freeze(in, 0);
	}
	s->timer = evtimer_new(w->base, session_timer_cb, s);
	s->all_next = w->all;
	if (w->all)
		w->all->all_prev = s;
	w->all = s;
	w->sessions++;
	bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, SESSION_INPUT_HIGH);
	bufferevent_setwatermark(s->bev, EV_WRITE, SESSION_OUTPUT_HIGH / 2, 0);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	s->state = SESSION_MAILDROP_WAIT;
	METRICS_INC(sessions[METRICS_STATE_TRANSACTION]);
	session_timer_arm(s);
	return s;
}

/* The handover failed before the session process had the connection:
 * back to AUTHORIZATION, as after any login that cannot be served. */
static void
session_handover_failed(struct session *s)
{
	if (s->relay_fd >= 0) {
		close(s->relay_fd);
		s->relay_fd = -1;
	}
	s->handover_request = 0;
	free(s->user);
	s->user = NULL;
	session_enter_state(s, SESSION_AUTHORIZATION);
	bufferevent_setwatermark(s->bev, EV_WRITE, SESSION_OUTPUT_HIGH / 2, 0);
	session_reply(s, "-ERR [SYS/TEMP] Mailbox is temporarily unavailable, try again later");
	session_read_enable(s, true);
	session_process_input(s);
	session_flush(s);
}

static void
session_handover_send(struct session *s)
{
	struct worker *w = s->worker;
	struct evbuffer *in = bufferevent_get_input(s->bev);
	size_t len = evbuffer_get_length(in);
	if (len > IPC_MAX_HANDOVER_INPUT) {
		log_warnx("session %016llx: %zu octets of pipelined input, more than a handover "
		    "carries", (unsigned long long)s->id, len);
		session_handover_failed(s);
		return;
	}
	int fd = bufferevent_getfd(s->bev);
	if (s->tls) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
			log_warn("session %016llx: relay socketpair", (unsigned long long)s->id);
			session_handover_failed(s);
			return;
		}
		s->relay_fd = sv[0];
		fd = sv[1];
	}
	char *b64 = base64_encode(len > 0 ? evbuffer_pullup(in, (ev_ssize_t)len) : (unsigned char *)"", len);
	const struct ipc_handover m = { .request_id = ++w->next_request, .session_id = s->id,
	    .flags = (s->tls ? IPC_HANDOVER_TLS : 0) | (s->loopback ? IPC_HANDOVER_LOOPBACK : 0),
	    .mech = (unsigned)s->login_mech, .ticket = s->ticket, .peer = s->peer,
	    .peer_ip = s->peer_ip, .device = s->handover_device != NULL ? s->handover_device : "", .input = b64 };
	static unsigned char *buf;   /* one per worker, kept: 260 KiB */
	if (buf == NULL)
		buf = xmalloc(IPC_MAX_MSG);
	size_t mlen = ipc_handover_encode(buf, IPC_MAX_MSG, &m);
	int r = mlen == 0 ? -1 : ipc_send_fd(w->control_fd, buf, mlen, fd);
	if (r < 0)
		log_warn("session %016llx: cannot hand the session over to the master",
		    (unsigned long long)s->id);
	/* The pipelined input may hold a password (PASS pipelined twice). */
	secure_wipe(buf, mlen);
	free_secret(b64);
	if (s->tls)
		close(fd);   /* the master got its own reference (or nothing) */
	if (r < 0) {
		session_handover_failed(s);
		return;
	}
	s->handover_request = m.request_id;
}

void
session_handover(struct session *s, const char *ticket, const char *device)
{
	snprintf(s->ticket, sizeof(s->ticket), "%s", ticket);
	free(s->handover_device);
	s->handover_device = xstrdup(device);
	session_enter_state(s, SESSION_HANDOVER);
	/* What the client sends from now on is the session process's to read
	 * (plain) or to get through the relay (TLS). */
	session_read_enable(s, false);
	if (!s->tls && evbuffer_get_length(bufferevent_get_output(s->bev)) > 0) {
		/* Our replies must reach the client before the session
		 * process's first one: wait for the write callback. */
		s->handover_flushing = true;
		bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
		bufferevent_enable(s->bev, EV_WRITE);
		return;
	}
	session_handover_send(s);
}

/* --- the TLS relay: client (s->bev, TLS) <-> session process (s->relay) --- */

static void
relay_client_read_cb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	struct evbuffer *to = bufferevent_get_output(s->relay);
	evbuffer_add_buffer(to, bufferevent_get_input(s->bev));
	if (evbuffer_get_length(to) >= SESSION_OUTPUT_HIGH)
		bufferevent_disable(s->bev, EV_READ);   /* until the process reads */
}

static void
relay_client_write_cb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	/* The client read below the low mark: take more from the process. */
	if (!s->freed_pending && s->relay != NULL)
		bufferevent_enable(s->relay, EV_READ);
}

static void
relay_proc_read_cb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	struct evbuffer *to = bufferevent_get_output(s->bev);
	size_t before = evbuffer_get_length(to);
	evbuffer_add_buffer(to, bufferevent_get_input(s->relay));
	s->bytes_out += evbuffer_get_length(to) - before;
	if (evbuffer_get_length(to) >= SESSION_OUTPUT_HIGH)
		bufferevent_disable(s->relay, EV_READ);   /* until the client reads */
}

static void
relay_proc_write_cb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	if (!s->freed_pending)
		bufferevent_enable(s->bev, EV_READ);
}

static void
relay_proc_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	/* The session process ended (QUIT, its timeout, killed): send the
	 * client what it wrote last, then close_notify and close. */
	evbuffer_add_buffer(bufferevent_get_output(s->bev), bufferevent_get_input(s->relay));
	bufferevent_free(s->relay);
	s->relay = NULL;
	bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
	session_close_after_reply(s, "session-process-ended");
}

void
session_handover_done(struct worker *w, const struct ipc_handover_done *m)
{
	struct session *s;
	for (s = w->all; s != NULL; s = s->all_next)
		if (s->handover_request == m->request_id && s->id == m->session_id)
			break;
	if (s == NULL || s->freed_pending || s->state != SESSION_HANDOVER)
		return;   /* gone meanwhile: the session process sees the end */
	s->handover_request = 0;
	if (!m->ok) {
		log_warnx("session %016llx: the master could not start a session process",
		    (unsigned long long)s->id);
		session_handover_failed(s);
		return;
	}
	struct evbuffer *in = bufferevent_get_input(s->bev);
	evbuffer_drain(in, evbuffer_get_length(in));   /* the process has it */
	if (!s->tls) {
		/* The process has the connection; ours closes with the session. */
		session_destroy_later(s, "handed-over");
		return;
	}
	s->relay = bufferevent_socket_new(w->base, s->relay_fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->relay == NULL) {
		session_destroy_later(s, "relay-error");
		return;
	}
	s->relay_fd = -1;
	/* Whole pieces of up to the high mark per read and write: the relay
	 * is a copy of every byte, so fewer and larger ones (libevent reads
	 * 4 KiB at a time otherwise). */
	bufferevent_set_max_single_read(s->relay, SESSION_OUTPUT_HIGH);
	bufferevent_set_max_single_write(s->relay, SESSION_OUTPUT_HIGH);
	session_enter_state(s, SESSION_RELAY);
	bufferevent_setcb(s->relay, relay_proc_read_cb, relay_proc_write_cb, relay_proc_event_cb, s);
	bufferevent_setwatermark(s->relay, EV_WRITE, SESSION_OUTPUT_HIGH / 2, 0);
	bufferevent_setcb(s->bev, relay_client_read_cb, relay_client_write_cb, session_event_cb, s);
	bufferevent_enable(s->relay, EV_READ | EV_WRITE);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	/* What the process wrote before we listened is read at once. */
}
