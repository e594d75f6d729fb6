/* The metrics process (metrics_listen): serves GET /metrics over HTTP with
 * libmicrohttpd from the counters the workers, the auth process and the
 * master publish (metrics.h). It runs as run_as, holds no POP3 socket and
 * no secret, and only reads the shared table, so the master still parses
 * no network bytes. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/log.h"
#include "server/metrics.h"
#include "server/popboxd.h"

/* Scrapers are few: a handful of connections, each answered at once. */
#define METRICS_HTTP_CONNECTIONS 16
#define METRICS_HTTP_TIMEOUT_SECONDS 10

static const struct metrics *table;

static enum MHD_Result
answer(struct MHD_Connection *c, unsigned status, const char *type, char *body, size_t len,
    bool owned)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body,
	    owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (r == NULL) {
		if (owned)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	enum MHD_Result ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
request_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
    const char *version, const char *upload_data, size_t *upload_size, void **state)
{
	static char not_found[] = "Not found: the metrics are at /metrics\n";
	static char not_allowed[] = "Only GET and HEAD\n";
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return answer(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
		    not_allowed, sizeof(not_allowed) - 1, false);
	if (strcmp(url, "/metrics") != 0)
		return answer(c, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", not_found,
		    sizeof(not_found) - 1, false);
	/* OpenMetrics when the scraper asks for it (Prometheus does). */
	const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
	bool om = accept != NULL && strstr(accept, "application/openmetrics-text") != NULL;
	char *text;
	size_t len = metrics_format(table, om, &text);
	return answer(c, MHD_HTTP_OK, om ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
	    : "text/plain; version=0.0.4; charset=utf-8", text, len, true);
}

void
metrics_main(struct child_env *env)
{
	prctl(PR_SET_NAME, "popboxd-metrics");
	log_set_procname("popboxd-metrics");
	/* Nothing of the POP3 side stays open here. */
	for (size_t i = 0; i < env->n_listeners; i++)
		close(env->listeners[i].fd);
	for (unsigned i = 0; i < env->n_workers; i++) {
		close(env->auth_fds[i]);
		close(env->worker_fds[i]);
	}
	table = env->metrics;
	if (table == NULL)
		fatalx("no shared memory for the metrics");
	struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
	    MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, request_cb, NULL,
	    MHD_OPTION_LISTEN_SOCKET, env->metrics_fd,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_HTTP_CONNECTIONS,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_HTTP_TIMEOUT_SECONDS,
	    MHD_OPTION_END);
	if (d == NULL)
		fatalx("cannot serve the metrics on %s", env->metrics_name);
	log_debug("serving metrics on %s", env->metrics_name);
	/* The control channel: reloads are ignored (metrics_listen needs a
	 * restart); its end means the master is gone. SIGTERM ends us. */
	char buf[256];
	for (;;) {
		struct pollfd p = { .fd = env->control_fd, .events = POLLIN };
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			fatal("poll");
		}
		ssize_t n = recv(env->control_fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR && errno != EMSGSIZE))
			break;
	}
	MHD_stop_daemon(d);
	_exit(0);
}
