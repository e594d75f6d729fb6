/*
 * lmtpload: LMTP delivery load generator for bench/mailin.py.
 *
 * Each of -c clients (threads) connects once, sends LHLO, then delivers
 * messages of -s octets for -d seconds: MAIL, RCPT and DATA pipelined in
 * one write (RFC 2920; SIZE= when LHLO offers it), the message (dot-stuffed, terminated), and the one
 * reply per recipient, which must be 250. Client i delivers to user
 * PREFIX<(i % -U)>@DOMAIN (-r PREFIX, -D DOMAIN). Prints one line
 *
 *   RESULT mode=lmtp clients=C size=S duration=T msgs=N rate=R errors=E
 *
 * and exits 0 only if messages were delivered without errors.
 *
 * Options: -H HOST (127.0.0.1)  -p PORT | -u UNIX_SOCKET_PATH  -c CLIENTS (1)
 *   -d SECONDS (5)  -s SIZE (4096)  -r PREFIX ("u")  -U NUSERS (= clients)
 *   -D DOMAIN ("" = bare names)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A reply line longer than this is an error (RFC 5321 §4.5.3.1.5: 512). */
#define LMTPLOAD_LINE_MAX 1024

static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_unix = NULL;
static int opt_clients = 1;
static double opt_duration = 5.0;
static long opt_size = 4096;
static const char *opt_prefix = "u";
static int opt_nusers = 0;
static const char *opt_domain = "";

static char *message;          /* dot-stuffed, with the terminator */
static size_t message_len;
static double t_deadline;
static atomic_long total_msgs, total_errors;

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A message of about size octets: headers, then 76-character lines, some
 * starting with a dot (stuffed here, as an MTA sends them). */
static void
build_message(long size)
{
	size_t cap = (size_t)size * 2 + 1024, n = 0;
	message = malloc(cap);
	n += (size_t)snprintf(message, cap, "From: <bench@popbox.test>\r\nTo: <user@popbox.test>\r\n"
	    "Subject: lmtpload\r\nMessage-Id: <lmtpload@popbox.test>\r\n\r\n");
	for (long line = 0; (long)n < size; line++) {
		if (line % 10 == 3)
			message[n++] = '.';   /* a stuffed leading dot */
		for (int i = 0; i < 74; i++)
			message[n++] = (char)('a' + (line + i) % 26);
		message[n++] = '\r';
		message[n++] = '\n';
	}
	memcpy(message + n, ".\r\n", 3);
	message_len = n + 3;
}

static int
connect_server(void)
{
	int fd;
	if (opt_unix != NULL) {
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", opt_unix);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0)
			return fd;
	} else {
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port) };
		inet_pton(AF_INET, opt_host, &sin.sin_addr);
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int one = 1;
		if (fd >= 0)
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0)
			return fd;
	}
	if (fd >= 0)
		close(fd);
	return -1;
}

struct conn {
	int fd;
	int size_offered;      /* LHLO listed SIZE: MAIL gives SIZE= */
	char buf[8192];
	size_t have, pos;
};

static int
send_all(struct conn *c, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* One reply (the last line of a multi-line one): its code, or -1. */
static int
read_reply(struct conn *c)
{
	char line[LMTPLOAD_LINE_MAX];
	size_t l = 0;

	for (;;) {
		if (c->pos == c->have) {
			ssize_t n = recv(c->fd, c->buf, sizeof(c->buf), 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return -1;
			c->have = (size_t)n;
			c->pos = 0;
		}
		char ch = c->buf[c->pos++];
		if (l + 1 >= sizeof(line))
			return -1;
		line[l++] = ch;
		if (ch != '\n')
			continue;
		if (l < 5)
			return -1;
		if (l >= 8 && memcmp(line + 4, "SIZE", 4) == 0)
			c->size_offered = 1;
		if (line[3] == '-') {
			l = 0;
			continue;
		}
		return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	}
}

static void *
client(void *arg)
{
	int id = (int)(intptr_t)arg;
	struct conn c = { .fd = connect_server() };
	char cmds[512];
	long msgs = 0, errors = 0;

	if (c.fd < 0 || read_reply(&c) != 220 || send_all(&c, "LHLO lmtpload\r\n", 15) < 0 ||
	    read_reply(&c) != 250) {
		atomic_fetch_add(&total_errors, 1);
		if (c.fd >= 0)
			close(c.fd);
		return NULL;
	}
	char size[32] = "";
	if (c.size_offered)
		snprintf(size, sizeof(size), " SIZE=%zu", message_len);
	int n = snprintf(cmds, sizeof(cmds), "MAIL FROM:<bench@popbox.test>%s\r\n"
	    "RCPT TO:<%s%d%s%s>\r\nDATA\r\n", size, opt_prefix, id % opt_nusers,
	    *opt_domain ? "@" : "", opt_domain);
	while (now() < t_deadline) {
		if (send_all(&c, cmds, (size_t)n) < 0 || read_reply(&c) != 250 ||
		    read_reply(&c) != 250 || read_reply(&c) != 354 ||
		    send_all(&c, message, message_len) < 0 || read_reply(&c) != 250) {
			errors++;
			break;
		}
		msgs++;
	}
	send_all(&c, "QUIT\r\n", 6);
	read_reply(&c);
	close(c.fd);
	atomic_fetch_add(&total_msgs, msgs);
	atomic_fetch_add(&total_errors, errors);
	return NULL;
}

int
main(int argc, char **argv)
{
	int ch;
	while ((ch = getopt(argc, argv, "H:p:u:c:d:s:r:U:D:")) != -1) {
		switch (ch) {
		case 'H': opt_host = optarg; break;
		case 'p': opt_port = atoi(optarg); break;
		case 'u': opt_unix = optarg; break;
		case 'c': opt_clients = atoi(optarg); break;
		case 'd': opt_duration = atof(optarg); break;
		case 's': opt_size = atol(optarg); break;
		case 'r': opt_prefix = optarg; break;
		case 'U': opt_nusers = atoi(optarg); break;
		case 'D': opt_domain = optarg; break;
		default:
			fprintf(stderr, "usage: lmtpload [-H host] -p port | -u path [-c clients] "
			    "[-d seconds] [-s size] [-r prefix] [-U users] [-D domain]\n");
			return 2;
		}
	}
	if ((opt_port <= 0 && opt_unix == NULL) || opt_clients < 1 || opt_clients > 1024 ||
	    opt_size < 1 || opt_duration <= 0) {
		fprintf(stderr, "lmtpload: bad options\n");
		return 2;
	}
	if (opt_nusers <= 0)
		opt_nusers = opt_clients;
	build_message(opt_size);
	pthread_t *t = calloc((size_t)opt_clients, sizeof(*t));
	double start = now();
	t_deadline = start + opt_duration;
	for (int i = 0; i < opt_clients; i++)
		pthread_create(&t[i], NULL, client, (void *)(intptr_t)i);
	for (int i = 0; i < opt_clients; i++)
		pthread_join(t[i], NULL);
	double el = now() - start;
	long msgs = atomic_load(&total_msgs), errors = atomic_load(&total_errors);
	printf("RESULT mode=lmtp clients=%d size=%ld duration=%.3f msgs=%ld rate=%.1f errors=%ld\n",
	    opt_clients, opt_size, el, msgs, msgs / el, errors);
	free(t);
	free(message);
	return msgs > 0 && errors == 0 ? 0 : 1;
}
