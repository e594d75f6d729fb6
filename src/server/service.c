/* popboxd under systemd: notifications and socket activation (service.h). */
#include "server/service.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "common/log.h"
#include "common/util.h"

char *
service_listen_name(const struct config_listen *cl)
{
	return strchr(cl->host, ':') ? xasprintf("[%s]:%s", cl->host, cl->port)
	    : xasprintf("%s:%s", cl->host, cl->port);
}

const char *
service_listen_kind(const struct config_listen *cl)
{
	return cl->tls ? "pop3s" : "pop3";
}

/* The address a config entry binds, as listener_bind in master.c resolves
 * it ("*" is IPv4 any). */
static int
listen_resolve(const struct config_listen *cl, struct sockaddr_storage *ss)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICHOST };
	struct addrinfo *res;
	const char *host = cl->host;
	if (strcmp(host, "*") == 0) {
		host = NULL;
		hints.ai_family = AF_INET;
	}
	if (getaddrinfo(host, cl->port, &hints, &res) != 0)
		return -1;
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, res->ai_addr, res->ai_addrlen < sizeof(*ss) ? res->ai_addrlen : sizeof(*ss));
	freeaddrinfo(res);
	return 0;
}

static bool
sockaddr_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
		return x->sin6_port == y->sin6_port &&
		    memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	return false;
}

/* "127.0.0.1:110", "[::1]:995", or "a unix socket" for logs. */
static void
sockaddr_text(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const void *)ss;
		inet_ntop(AF_INET, &s->sin_addr, host, sizeof(host));
		snprintf(buf, size, "%s:%u", host, (unsigned)ntohs(s->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const void *)ss;
		inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof(host));
		snprintf(buf, size, "[%s]:%u", host, (unsigned)ntohs(s->sin6_port));
	} else {
		snprintf(buf, size, "an address of family %d", (int)ss->ss_family);
	}
}

/* The name list sd_listen_fds_with_names allocates. */
static void
strv_free_sd(char **v)
{
	for (size_t i = 0; v != NULL && v[i] != NULL; i++)
		free(v[i]);
	free(v);
}

int
service_listeners(const struct config *config, struct listener **out, char **error_r)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);
	if (n < 0) {
		*error_r = xasprintf("socket activation: %s", strerror(-n));
		return -1;
	}
	if (n == 0) {
		strv_free_sd(names);
		return 0;
	}
	struct listener *ls = xcalloc(config->n_listens ? config->n_listens : 1, sizeof(*ls));
	for (size_t i = 0; i < config->n_listens; i++)
		ls[i].fd = -1;
	char *err = NULL;
	for (int i = 0; i < n && err == NULL; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		const char *name = names != NULL && names[i] != NULL ? names[i] : "unknown";
		struct sockaddr_storage ss;
		socklen_t sslen = sizeof(ss);
		char text[INET6_ADDRSTRLEN + 16];
		memset(&ss, 0, sizeof(ss));
		if (getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0) {
			err = xasprintf("socket activation: passed descriptor %d (%s): %s", fd, name,
			    strerror(errno));
			break;
		}
		sockaddr_text(&ss, text, sizeof(text));
		if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
			err = xasprintf("socket activation: passed socket %s (%s) is not a listening "
			    "stream socket (ListenStream= in the socket unit)", name, text);
			break;
		}
		if (strcmp(name, "pop3") != 0 && strcmp(name, "pop3s") != 0) {
			err = xasprintf("socket activation: passed socket %s is named '%s'; name it "
			    "pop3 (for listen) or pop3s (for listen_tls) with FileDescriptorName= "
			    "in the socket unit", text, name);
			break;
		}
		size_t match = config->n_listens;
		for (size_t j = 0; j < config->n_listens; j++) {
			struct sockaddr_storage want;
			if (strcmp(service_listen_kind(&config->listens[j]), name) != 0 ||
			    listen_resolve(&config->listens[j], &want) < 0 || !sockaddr_same(&ss, &want))
				continue;
			match = j;
			break;
		}
		if (match == config->n_listens) {
			err = xasprintf("socket activation: the socket unit passes %s socket %s, which "
			    "%s does not list in %s; add it there or remove it from the socket unit",
			    name, text, config->path, strcmp(name, "pop3s") == 0 ? "listen_tls" : "listen");
			break;
		}
		if (ls[match].fd >= 0) {
			err = xasprintf("socket activation: %s socket %s is passed twice", name, text);
			break;
		}
		ls[match].fd = fd;
		ls[match].tls = config->listens[match].tls;
		ls[match].name = service_listen_name(&config->listens[match]);
	}
	for (size_t j = 0; j < config->n_listens && err == NULL; j++) {
		if (ls[j].fd >= 0)
			continue;
		char *want = service_listen_name(&config->listens[j]);
		err = xasprintf("socket activation: %s lists %s %s, which the socket unit does not "
		    "pass (add ListenStream=%s with FileDescriptorName=%s, or remove it from %s)",
		    config->path, config->listens[j].tls ? "listen_tls" : "listen", want, want,
		    service_listen_kind(&config->listens[j]), config->path);
		free(want);
	}
	strv_free_sd(names);
	if (err != NULL) {
		for (int i = 0; i < n; i++)
			close(SD_LISTEN_FDS_START + i);
		for (size_t j = 0; j < config->n_listens; j++)
			free(ls[j].name);
		free(ls);
		*error_r = err;
		return -1;
	}
	for (size_t j = 0; j < config->n_listens; j++) {
		int fl = fcntl(ls[j].fd, F_GETFL);
		if (fl >= 0)
			(void)fcntl(ls[j].fd, F_SETFL, fl | O_NONBLOCK);
		(void)fcntl(ls[j].fd, F_SETFD, FD_CLOEXEC);
	}
	*out = ls;
	return 1;
}

static char *last_status;

void
service_notify_status(const char *status)
{
	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	if (last_status != NULL && strcmp(last_status, status) == 0)
		return;
	free(last_status);
	last_status = xstrdup(status);
	(void)sd_notifyf(0, "STATUS=%s", status);
}

void
service_notify_ready(const char *status)
{
	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	free(last_status);
	last_status = xstrdup(status);
	(void)sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void
service_notify_reloading(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	/* MONOTONIC_USEC lets a systemd that knows Type=notify-reload tell
	 * this reload from an older one; older ones ignore it. */
	(void)sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

void
service_notify_stopping(void)
{
	(void)sd_notify(0, "STOPPING=1");
}
