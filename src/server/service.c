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
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
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

/* "127.0.0.1:110", "[::1]:995" or "unix:/run/popbox/lmtp" for logs. */
static void
sockaddr_text(const struct sockaddr_storage *ss, socklen_t sslen, char *buf, size_t size)
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
	} else if (ss->ss_family == AF_UNIX) {
		const struct sockaddr_un *s = (const void *)ss;
		size_t off = offsetof(struct sockaddr_un, sun_path);
		int len = sslen > off ? (int)strnlen(s->sun_path, sslen - off) : 0;
		snprintf(buf, size, "unix:%.*s", len, s->sun_path);
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

/* One listener the config asks for: what a passed socket must be to take
 * its place. */
struct wanted {
	const char *kind;                  /* the FileDescriptorName= */
	const char *key;                   /* the config key, for errors */
	const struct config_listen *cl;    /* a TCP entry, or */
	const char *path;                  /* listen_lmtp = unix:PATH */
	char *name;                        /* for logs and errors */
};

static bool
wanted_matches(const struct wanted *w, const char *kind, const struct sockaddr_storage *ss,
    socklen_t sslen)
{
	if (strcmp(w->kind, kind) != 0)
		return false;
	if (w->path != NULL) {
		const struct sockaddr_un *sun = (const void *)ss;
		size_t off = offsetof(struct sockaddr_un, sun_path);
		return ss->ss_family == AF_UNIX && sslen > off &&
		    strncmp(sun->sun_path, w->path, sslen - off) == 0 &&
		    strlen(w->path) == strnlen(sun->sun_path, sslen - off);
	}
	struct sockaddr_storage want;
	return listen_resolve(w->cl, &want) == 0 && sockaddr_same(ss, &want);
}

/* The listeners the config asks for, in the master's order: listen and
 * listen_tls, then listen_lmtp TCP entries, then its unix sockets. */
static struct wanted *
wanted_list(const struct config *config, size_t *n_r)
{
	size_t n = config->n_listens + config->n_lmtp_listens + config->n_lmtp_unix, k = 0;
	struct wanted *w = xcalloc(n ? n : 1, sizeof(*w));
	for (size_t i = 0; i < config->n_listens; i++, k++) {
		w[k].cl = &config->listens[i];
		w[k].kind = service_listen_kind(w[k].cl);
		w[k].key = w[k].cl->tls ? "listen_tls" : "listen";
		w[k].name = service_listen_name(w[k].cl);
	}
	for (size_t i = 0; i < config->n_lmtp_listens; i++, k++) {
		w[k].cl = &config->lmtp_listens[i];
		w[k].kind = "lmtp";
		w[k].key = "listen_lmtp";
		w[k].name = service_listen_name(w[k].cl);
	}
	for (size_t i = 0; i < config->n_lmtp_unix; i++, k++) {
		w[k].path = config->lmtp_unix[i];
		w[k].kind = "lmtp";
		w[k].key = "listen_lmtp";
		w[k].name = xasprintf("unix:%s", w[k].path);
	}
	*n_r = n;
	return w;
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
	size_t nw;
	struct wanted *w = wanted_list(config, &nw);
	struct listener *ls = xcalloc(nw ? nw : 1, sizeof(*ls));
	for (size_t i = 0; i < nw; i++)
		ls[i].fd = -1;
	char *err = NULL;
	for (int i = 0; i < n && err == NULL; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		const char *name = names != NULL && names[i] != NULL ? names[i] : "unknown";
		struct sockaddr_storage ss;
		socklen_t sslen = sizeof(ss);
		char text[sizeof(((struct sockaddr_un *)0)->sun_path) + 16];
		memset(&ss, 0, sizeof(ss));
		if (getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0) {
			err = xasprintf("socket activation: passed descriptor %d (%s): %s", fd, name,
			    strerror(errno));
			break;
		}
		sockaddr_text(&ss, sslen, text, sizeof(text));
		if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
			err = xasprintf("socket activation: passed socket %s (%s) is not a listening "
			    "stream socket (ListenStream= in the socket unit)", name, text);
			break;
		}
		if (strcmp(name, "pop3") != 0 && strcmp(name, "pop3s") != 0 &&
		    strcmp(name, "lmtp") != 0) {
			err = xasprintf("socket activation: passed socket %s is named '%s'; name it "
			    "pop3 (for listen), pop3s (for listen_tls) or lmtp (for listen_lmtp) "
			    "with FileDescriptorName= in the socket unit", text, name);
			break;
		}
		size_t match = nw;
		for (size_t j = 0; j < nw && match == nw; j++)
			if (wanted_matches(&w[j], name, &ss, sslen))
				match = j;
		if (match == nw) {
			err = xasprintf("socket activation: the socket unit passes %s socket %s, which "
			    "%s does not list in %s; add it there or remove it from the socket unit",
			    name, text, config->path, strcmp(name, "pop3s") == 0 ? "listen_tls" :
			    strcmp(name, "lmtp") == 0 ? "listen_lmtp" : "listen");
			break;
		}
		if (ls[match].fd >= 0) {
			err = xasprintf("socket activation: %s socket %s is passed twice", name, text);
			break;
		}
		ls[match].fd = fd;
		ls[match].tls = w[match].cl != NULL && w[match].cl->tls;
		ls[match].lmtp = strcmp(w[match].kind, "lmtp") == 0;
		/* A unix socket file made by systemd stays its: unix_socket
		 * false, so popboxd never removes it. */
		ls[match].name = w[match].name;
		w[match].name = NULL;
	}
	for (size_t j = 0; j < nw && err == NULL; j++) {
		if (ls[j].fd >= 0)
			continue;
		err = xasprintf("socket activation: %s lists %s %s, which the socket unit does not "
		    "pass (add ListenStream=%s with FileDescriptorName=%s, or remove it from %s)",
		    config->path, w[j].key, w[j].name,
		    w[j].path != NULL ? w[j].path : w[j].name, w[j].kind, config->path);
	}
	for (size_t j = 0; j < nw; j++)
		free(w[j].name);
	free(w);
	strv_free_sd(names);
	if (err != NULL) {
		for (int i = 0; i < n; i++)
			close(SD_LISTEN_FDS_START + i);
		for (size_t j = 0; j < nw; j++)
			free(ls[j].name);
		free(ls);
		*error_r = err;
		return -1;
	}
	for (size_t j = 0; j < nw; j++) {
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
