/*
 * pop3load: POP3 load generator and machine-limit probes for bench/run.sh.
 *
 *   pop3load sessions  [opts]   connect, greeting, USER/PASS, STAT, QUIT in a
 *                               loop per client; sessions/s and latency
 *   pop3load tls       [opts]   the same over implicit TLS (-T is implied)
 *   pop3load retr      [opts]   log in, LIST, RETR every message (verifies the
 *                               end marker and the LIST size), QUIT, again
 *   pop3load idle      [opts]   open and hold K authenticated sessions
 *   pop3load bigbox    [opts]   one login: time PASS, STAT, UIDL, LIST
 *   pop3load stream    [opts]   loopback TCP stream limit (own server thread)
 *   pop3load ideal-server [opts] answer every POP3 command with a fixed reply
 *                               from memory (the round-trip limit)
 *   pop3load file-server -M MAILDIR [opts]  the same, but RETR reads the
 *                               message from MAILDIR/cur (open, pread 64 KiB
 *                               at a time, close), converts it to the wire
 *                               form with popbox's encoder and writes each
 *                               piece: the least work a Maildir server does
 *
 * Every loop is bounded by -d SECONDS (and optionally -n COUNT). Results are
 * printed as one line "RESULT mode=... key=value ..." on stdout; the exit
 * status is 0 only if work was done without errors.
 *
 * Options:
 *   -H HOST (127.0.0.1)  -p PORT  -c CLIENTS (1)  -d SECONDS (5)  -n COUNT
 *   -u USERPREFIX ("u": users u0, u1, ...)   -U NUSERS (= clients)  -o USEROFFSET (0)
 *   -P PASSWORD ("secret")
 *   -T  implicit TLS (port 995 style) in every mode; implied by mode tls
 *   -E  STLS: greeting, STLS, then the handshake, in every mode
 *   -R none|ticket|cache  TLS resumption of a client's previous session:
 *       none = a full handshake every connection; ticket (the default) =
 *       whatever the library offers, TLS 1.3 session tickets; cache = TLS 1.2
 *       without the ticket extension, i.e. the server's session-ID cache
 *   -G GROUPS  key-exchange groups offered, e.g. P-256 or X25519 (OpenSSL
 *       names, colon-separated); the default is the library's list
 *   -k SESSIONS (idle)   -r READYFILE (idle: written when all are open)
 *   -m MSGS -s SIZE (ideal-server: maildrop it pretends to have)
 *   -M MAILDIR (file-server: the Maildir every user is served; with "%u" in
 *       it and -u PFX -U N, the Maildirs of users PFX0..PFX{N-1}, by USER)
 *   -e (file-server) -c event loops (epoll) instead of -c threads that each
 *       serve one connection at a time
 *   -S (bind a distinct 127.0.0.x source address per client)
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/wire.h"

/* ------------------------------------------------------------ options */

static const char *opt_host = "127.0.0.1";
static int opt_port = 110;
static int opt_clients = 1;
static double opt_duration = 5.0;
static long opt_count = 0;
static const char *opt_userpfx = "u";
static int opt_nusers = 0;
static int opt_useroff = 0;
static const char *opt_password = "secret";
static int opt_tls = 0;  /* 1 implicit TLS, 2 STLS */
static enum { RESUME_NONE, RESUME_TICKET, RESUME_CACHE } opt_resume = RESUME_TICKET;
static const char *opt_groups = NULL;
static int opt_sessions = 100;
static const char *opt_ready = NULL;
static int opt_msgs = 10;
static long opt_size = 4096;
static int opt_srcaddr = 0;
static const char *opt_maildir = NULL;
static int opt_loop = 0;

static SSL_CTX *client_ctx;
static double t_deadline;
static atomic_long total_ops;
static atomic_int stop_flag;

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("pop3load: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static int
time_up(void)
{
	if (atomic_load(&stop_flag) || now() >= t_deadline)
		return 1;
	return opt_count > 0 && atomic_load(&total_ops) >= opt_count;
}

/* ------------------------------------------------------------ latency */

struct lat {
	double *v;
	size_t n, cap;
};

static void
lat_add(struct lat *l, double sec)
{
	if (l->n == l->cap) {
		if (l->cap >= (1u << 22))
			return; /* bounded: 4M samples per thread is plenty */
		l->cap = l->cap ? l->cap * 2 : 1024;
		l->v = realloc(l->v, l->cap * sizeof *l->v);
		if (!l->v)
			die("out of memory");
	}
	l->v[l->n++] = sec;
}

static int
cmpd(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void
lat_merge(struct lat *dst, const struct lat *src)
{
	for (size_t i = 0; i < src->n; i++)
		lat_add(dst, src->v[i]);
}

static double
lat_pct(struct lat *l, double p)
{
	if (l->n == 0)
		return 0;
	size_t i = (size_t)(p / 100.0 * (l->n - 1) + 0.5);
	return l->v[i] * 1000.0;
}

static void
lat_print(struct lat *l, const char *prefix)
{
	qsort(l->v, l->n, sizeof *l->v, cmpd);
	printf(" %sp50_ms=%.3f %sp90_ms=%.3f %sp99_ms=%.3f %smax_ms=%.3f", prefix,
	    lat_pct(l, 50), prefix, lat_pct(l, 90), prefix, lat_pct(l, 99), prefix,
	    lat_pct(l, 100));
}

/* ------------------------------------------------------------ connection */

struct conn {
	int fd;
	SSL *ssl;
	char *buf;
	size_t cap, r, w;
	int resumed;
	int greeted; /* the greeting was read (STLS reads it before the handshake) */
};

/* what the first TLS handshake negotiated, printed with the result */
static char tls_desc[160];
static pthread_mutex_t tls_desc_lock = PTHREAD_MUTEX_INITIALIZER;

static void
tls_describe(SSL *ssl)
{
	pthread_mutex_lock(&tls_desc_lock);
	if (tls_desc[0] == '\0') {
		const char *group = "?", *cert = "?";
		int nid = SSL_get_negotiated_group(ssl);
		if (nid != NID_undef) {
			const char *n = SSL_group_to_name(ssl, nid);
			if (n)
				group = n;
		}
		X509 *x = SSL_get0_peer_certificate(ssl);
		EVP_PKEY *k = x ? X509_get0_pubkey(x) : NULL;
		if (k)
			cert = EVP_PKEY_get0_type_name(k);
		snprintf(tls_desc, sizeof tls_desc, " tls_version=%s tls_group=%s tls_cert=%s%d",
		    SSL_get_version(ssl), group, cert ? cert : "?", k ? EVP_PKEY_get_bits(k) : 0);
	}
	pthread_mutex_unlock(&tls_desc_lock);
}

static void
set_nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static struct sockaddr_in server_addr;

static char *conn_line(struct conn *c);
static int conn_write(struct conn *c, const void *p, size_t n);

static void
resolve(void)
{
	memset(&server_addr, 0, sizeof server_addr);
	server_addr.sin_family = AF_INET;
	server_addr.sin_port = htons(opt_port);
	if (inet_pton(AF_INET, opt_host, &server_addr.sin_addr) != 1)
		die("host must be an IPv4 address: %s", opt_host);
}

static int
conn_open(struct conn *c, size_t cap, int idx, SSL_SESSION **sess)
{
	memset(c, 0, sizeof *c);
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	set_nodelay(c->fd);
	if (opt_srcaddr) {
		struct sockaddr_in src = { .sin_family = AF_INET };
		src.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)(2 + idx % 250) << 8 | 1);
		int one = 1;
		setsockopt(c->fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
		if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
			close(c->fd);
			return -1;
		}
	}
	if (connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0) {
		close(c->fd);
		return -1;
	}
	c->cap = cap;
	c->buf = malloc(cap);
	if (!c->buf)
		die("out of memory");
	if (opt_tls == 2) {
		/* STLS: plain greeting and command, then the handshake */
		char *st = conn_line(c);
		if (!st || strncmp(st, "+OK", 3) != 0 || conn_write(c, "STLS\r\n", 6) < 0 ||
		    (st = conn_line(c)) == NULL || strncmp(st, "+OK", 3) != 0 || c->r != c->w)
			goto fail;
		c->greeted = 1;
	}
	if (opt_tls) {
		c->ssl = SSL_new(client_ctx);
		SSL_set_fd(c->ssl, c->fd);
		if (sess && *sess && opt_resume != RESUME_NONE)
			SSL_set_session(c->ssl, *sess);
		if (SSL_connect(c->ssl) != 1) {
			SSL_free(c->ssl);
			c->ssl = NULL;
			goto fail;
		}
		c->resumed = SSL_session_reused(c->ssl);
		if (!c->resumed)
			tls_describe(c->ssl);
	}
	return 0;
fail:
	close(c->fd);
	free(c->buf);
	c->buf = NULL;
	c->fd = -1;
	return -1;
}

/* the server's greeting (already read under STLS); 0 if +OK */
static int
conn_greeting(struct conn *c)
{
	if (c->greeted)
		return 0;
	char *st = conn_line(c);
	return st && strncmp(st, "+OK", 3) == 0 ? 0 : -1;
}

static void
conn_close(struct conn *c, SSL_SESSION **sess)
{
	if (c->ssl) {
		if (sess && opt_resume != RESUME_NONE) {
			SSL_SESSION *s = SSL_get1_session(c->ssl);
			if (s) {
				if (*sess)
					SSL_SESSION_free(*sess);
				*sess = s;
			}
		}
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	if (c->fd >= 0)
		close(c->fd);
	free(c->buf);
	c->buf = NULL;
	c->fd = -1;
}

static int
conn_write(struct conn *c, const void *p, size_t n)
{
	if (c->ssl) {
		return SSL_write(c->ssl, p, (int)n) > 0 ? 0 : -1;
	}
	size_t off = 0;
	while (off < n) {
		ssize_t r = write(c->fd, (const char *)p + off, n - off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		off += r;
	}
	return 0;
}

/* read more into the buffer; 0 on success, -1 on EOF/error */
static int
conn_fill(struct conn *c)
{
	if (c->r == c->w)
		c->r = c->w = 0;
	else if (c->w == c->cap) {
		if (c->r == 0)
			return -1; /* line longer than the buffer */
		memmove(c->buf, c->buf + c->r, c->w - c->r);
		c->w -= c->r;
		c->r = 0;
	}
	ssize_t n;
	for (;;) {
		if (c->ssl) {
			int k = SSL_read(c->ssl, c->buf + c->w, (int)(c->cap - c->w));
			n = k > 0 ? k : -1;
		} else {
			n = read(c->fd, c->buf + c->w, c->cap - c->w);
			if (n < 0 && errno == EINTR)
				continue;
		}
		break;
	}
	if (n <= 0)
		return -1;
	c->w += n;
	return 0;
}

/* next line (without CRLF, NUL-terminated in place) or NULL */
static char *
conn_line(struct conn *c)
{
	size_t scan = c->r;
	for (;;) {
		char *nl = memchr(c->buf + scan, '\n', c->w - scan);
		if (nl) {
			char *line = c->buf + c->r;
			size_t len = nl - line;
			c->r += len + 1;
			if (len > 0 && line[len - 1] == '\r')
				len--;
			line[len] = '\0';
			return line;
		}
		size_t had = c->w - c->r;
		if (conn_fill(c) < 0)
			return NULL;
		scan = c->r + had;
	}
}

/* send a command, read the status line; 0 if +OK */
static int
cmd(struct conn *c, const char *line, char **status)
{
	char out[300];
	int n = snprintf(out, sizeof out, "%s\r\n", line);
	if (conn_write(c, out, n) < 0)
		return -1;
	char *st = conn_line(c);
	if (status)
		*status = st;
	return st && strncmp(st, "+OK", 3) == 0 ? 0 : -1;
}

/*
 * Consume a multi-line body up to and including ".CRLF". *wire gets the
 * octets before the terminator (dot-stuffed), *dots the number of stuffed
 * dots removed. Ordinary lines cost one memchr each.
 */
static int
read_body(struct conn *c, long *wire, long *dots)
{
	long n = 0, d = 0;
	int at_line_start = 1;
	for (;;) {
		while (c->r < c->w) {
			size_t avail = c->w - c->r;
			char *p = c->buf + c->r;
			if (at_line_start) {
				if (p[0] == '.') {
					if (avail < 2)
						goto more;
					if (p[1] == '.') {
						d++;
						n += 2;
						c->r += 2;
						at_line_start = 0;
						continue;
					}
					if (avail < 3)
						goto more;
					if (p[1] == '\r' && p[2] == '\n') {
						c->r += 3;
						*wire = n;
						*dots = d;
						return 0;
					}
					return -1; /* unstuffed dot line */
				}
				at_line_start = 0;
			}
			/* skip whole lines with memchr (vectorised in glibc) until
			 * one is followed by '.'; memmem("\n.") was the client's
			 * bottleneck (84% of its time at 1 MiB messages) */
			char *end = p + avail, *q = p;
			for (;;) {
				char *nl = memchr(q, '\n', (size_t)(end - q));
				if (nl == NULL) {
					q = end;
					break;
				}
				q = nl + 1;
				if (q == end || *q == '.') {
					at_line_start = 1;
					break;
				}
			}
			n += q - p;
			c->r += q - p;
		}
more:
		if (conn_fill(c) < 0)
			return -1;
	}
}

static void
user_name(char *out, size_t n, int idx)
{
	int nu = opt_nusers > 0 ? opt_nusers : opt_clients;
	snprintf(out, n, "%s%d", opt_userpfx, opt_useroff + idx % nu);
}

static int
login(struct conn *c, int uidx)
{
	char u[128], line[300];
	user_name(u, sizeof u, uidx);
	snprintf(line, sizeof line, "USER %s", u);
	if (cmd(c, line, NULL) < 0)
		return -1;
	snprintf(line, sizeof line, "PASS %s", opt_password);
	return cmd(c, line, NULL);
}

/* ------------------------------------------------------------ sessions */

struct worker {
	pthread_t th;
	int idx;
	long ops, errors, resumed, bytes, msgs;
	struct lat lat;
	struct lat lat2;
};

static void *
sessions_thread(void *arg)
{
	struct worker *w = arg;
	SSL_SESSION *sess = NULL;
	int round = 0;
	while (!time_up()) {
		double t0 = now();
		struct conn c;
		int uidx = w->idx; /* each client its own user: the maildrop lock */
		if (conn_open(&c, 4096, w->idx + opt_clients * (round++ & 1), &sess) < 0) {
			w->errors++;
			usleep(1000);
			continue;
		}
		int ok = conn_greeting(&c) == 0 && login(&c, uidx) == 0 &&
		    cmd(&c, "STAT", NULL) == 0 && cmd(&c, "QUIT", NULL) == 0;
		if (ok && c.resumed)
			w->resumed++;
		conn_close(&c, &sess);
		if (ok) {
			w->ops++;
			atomic_fetch_add(&total_ops, 1);
			lat_add(&w->lat, now() - t0);
		} else {
			w->errors++;
			usleep(1000);
		}
	}
	if (sess)
		SSL_SESSION_free(sess);
	return NULL;
}

/* ------------------------------------------------------------ retr */

static void *
retr_thread(void *arg)
{
	struct worker *w = arg;
	while (!time_up()) {
		struct conn c;
		if (conn_open(&c, 256 * 1024, w->idx, NULL) < 0) {
			w->errors++;
			usleep(1000);
			continue;
		}
		if (conn_greeting(&c) < 0 || login(&c, w->idx) < 0 ||
		    cmd(&c, "LIST", NULL) < 0) {
			w->errors++;
			conn_close(&c, NULL);
			usleep(1000);
			continue;
		}
		long *sizes = NULL;
		size_t nsz = 0, capsz = 0;
		char *line;
		while ((line = conn_line(&c)) && strcmp(line, ".") != 0) {
			long num, sz;
			if (sscanf(line, "%ld %ld", &num, &sz) != 2)
				continue;
			if (nsz == capsz) {
				capsz = capsz ? capsz * 2 : 256;
				sizes = realloc(sizes, capsz * sizeof *sizes);
			}
			sizes[nsz++] = sz;
		}
		int bad = line == NULL;
		for (size_t i = 0; !bad && i < nsz && !time_up(); i++) {
			char cm[64];
			snprintf(cm, sizeof cm, "RETR %zu", i + 1);
			double t0 = now();
			long wire, dots;
			if (cmd(&c, cm, NULL) < 0 || read_body(&c, &wire, &dots) < 0) {
				bad = 1;
				break;
			}
			lat_add(&w->lat, now() - t0);
			if (wire - dots != sizes[i]) {
				fprintf(stderr, "pop3load: RETR %zu: %ld octets, LIST said %ld\n",
				    i + 1, wire - dots, sizes[i]);
				w->errors++;
			}
			w->msgs++;
			w->bytes += sizes[i];
			atomic_fetch_add(&total_ops, 1);
		}
		if (!bad && cmd(&c, "QUIT", NULL) < 0)
			bad = 1;
		if (bad)
			w->errors++;
		free(sizes);
		conn_close(&c, NULL);
		if (nsz == 0) {
			fprintf(stderr, "pop3load: empty maildrop\n");
			w->errors++;
			break;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------ idle */

static volatile sig_atomic_t release_flag;

static void
on_release(int sig)
{
	(void)sig;
	release_flag = 1;
}

struct idle_state {
	struct conn *conns;
	int *ok;
	atomic_int next;
	atomic_int opened;
	atomic_long errors;
};

static struct idle_state IS;

static void *
idle_open_thread(void *arg)
{
	(void)arg;
	for (;;) {
		int i = atomic_fetch_add(&IS.next, 1);
		if (i >= opt_sessions || now() >= t_deadline)
			break;
		struct conn *c = &IS.conns[i];
		if (conn_open(c, 512, i, NULL) < 0) {
			atomic_fetch_add(&IS.errors, 1);
			IS.conns[i].fd = -1;
			continue;
		}
		if (conn_greeting(c) < 0 || login(c, i) < 0 ||
		    cmd(c, "STAT", NULL) < 0) {
			atomic_fetch_add(&IS.errors, 1);
			conn_close(c, NULL);
			continue;
		}
		IS.ok[i] = 1;
		atomic_fetch_add(&IS.opened, 1);
	}
	return NULL;
}

static int
run_idle(void)
{
	IS.conns = calloc(opt_sessions, sizeof *IS.conns);
	IS.ok = calloc(opt_sessions, sizeof *IS.ok);
	if (!IS.conns || !IS.ok)
		die("out of memory");
	signal(SIGUSR1, on_release);
	int nth = opt_clients < 1 ? 1 : opt_clients;
	pthread_t th[256];
	if (nth > 256)
		nth = 256;
	double t0 = now();
	/* opening gets at most the whole duration; holding is bounded too */
	for (int i = 0; i < nth; i++)
		pthread_create(&th[i], NULL, idle_open_thread, NULL);
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	double t_open = now() - t0;
	int opened = atomic_load(&IS.opened);
	fprintf(stderr, "pop3load: %d sessions open in %.2fs\n", opened, t_open);
	if (opt_ready) {
		char tmp[4096];
		snprintf(tmp, sizeof tmp, "%s.tmp", opt_ready);
		FILE *f = fopen(tmp, "w");
		if (f) {
			fprintf(f, "%d\n", opened);
			fclose(f);
			rename(tmp, opt_ready);
		}
	}
	/* hold until SIGUSR1 or the duration (a second deadline) */
	double hold_until = now() + opt_duration;
	while (!release_flag && now() < hold_until)
		usleep(20000);
	/* every held session must still answer */
	long dead = 0;
	for (int i = 0; i < opt_sessions; i++) {
		if (!IS.ok[i])
			continue;
		if (cmd(&IS.conns[i], "QUIT", NULL) < 0)
			dead++;
		conn_close(&IS.conns[i], NULL);
	}
	long errs = atomic_load(&IS.errors) + dead;
	printf("RESULT mode=idle sessions=%d open_s=%.3f open_rate=%.1f dead=%ld errors=%ld%s\n",
	    opened, t_open, t_open > 0 ? opened / t_open : 0, dead, errs, tls_desc);
	return opened == opt_sessions && errs == 0 ? 0 : 1;
}

/* ------------------------------------------------------------ bigbox */

static int
run_bigbox(void)
{
	struct conn c;
	double t0 = now();
	if (conn_open(&c, 256 * 1024, 0, NULL) < 0)
		die("connect: %s", strerror(errno));
	if (conn_greeting(&c) < 0)
		die("no greeting");
	char *st;
	double t_greet = now();
	char u[128], line[300];
	user_name(u, sizeof u, 0);
	snprintf(line, sizeof line, "USER %s", u);
	if (cmd(&c, line, NULL) < 0)
		die("USER refused");
	double t1 = now();
	snprintf(line, sizeof line, "PASS %s", opt_password);
	if (cmd(&c, line, &st) < 0)
		die("PASS refused: %s", st ? st : "(closed)");
	double t_pass = now() - t1;
	t1 = now();
	long nmsg = 0, total = 0;
	if (cmd(&c, "STAT", &st) < 0 || sscanf(st, "+OK %ld %ld", &nmsg, &total) != 2)
		die("STAT failed");
	double t_stat = now() - t1;
	t1 = now();
	if (cmd(&c, "UIDL", NULL) < 0)
		die("UIDL failed");
	long nu = 0;
	while ((st = conn_line(&c)) && strcmp(st, ".") != 0)
		nu++;
	double t_uidl = now() - t1;
	t1 = now();
	if (cmd(&c, "LIST", NULL) < 0)
		die("LIST failed");
	long nl = 0, sum = 0;
	while ((st = conn_line(&c)) && strcmp(st, ".") != 0) {
		long a, b;
		if (sscanf(st, "%ld %ld", &a, &b) == 2)
			sum += b;
		nl++;
	}
	double t_list = now() - t1;
	double t_total = now() - t0;
	cmd(&c, "QUIT", NULL);
	conn_close(&c, NULL);
	int errs = (nu != nmsg) + (nl != nmsg) + (sum != total);
	printf("RESULT mode=bigbox msgs=%ld octets=%ld greet_ms=%.2f pass_ms=%.2f stat_ms=%.2f "
	       "uidl_ms=%.2f list_ms=%.2f total_ms=%.2f errors=%d\n",
	    nmsg, total, (t_greet - t0) * 1e3, t_pass * 1e3, t_stat * 1e3, t_uidl * 1e3,
	    t_list * 1e3, t_total * 1e3, errs);
	return errs || nmsg == 0 ? 1 : 0;
}

/* ------------------------------------------------------------ stream */

static int stream_lfd;

static void *
stream_server(void *arg)
{
	(void)arg;
	int fd = accept(stream_lfd, NULL, NULL);
	if (fd < 0)
		return NULL;
	set_nodelay(fd);
	size_t n = 256 * 1024;
	char *b = malloc(n);
	memset(b, 'x', n);
	while (!time_up()) {
		if (write(fd, b, n) <= 0)
			break;
	}
	close(fd);
	free(b);
	return NULL;
}

struct stream_arg {
	pthread_t th;
	long bytes;
};

static void *
stream_client(void *arg)
{
	struct stream_arg *a = arg;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0)
		die("connect: %s", strerror(errno));
	set_nodelay(fd);
	char *b = malloc(256 * 1024);
	ssize_t n;
	while ((n = read(fd, b, 256 * 1024)) > 0)
		a->bytes += n;
	close(fd);
	free(b);
	return NULL;
}

static int
run_stream(void)
{
	stream_lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(stream_lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(stream_lfd, 64) < 0)
		die("bind: %s", strerror(errno));
	socklen_t al = sizeof a;
	getsockname(stream_lfd, (struct sockaddr *)&a, &al);
	opt_port = ntohs(a.sin_port);
	resolve();
	int n = opt_clients;
	struct stream_arg *cl = calloc(n, sizeof *cl);
	pthread_t *sv = calloc(n, sizeof *sv);
	double t0 = now();
	for (int i = 0; i < n; i++) {
		pthread_create(&sv[i], NULL, stream_server, NULL);
		pthread_create(&cl[i].th, NULL, stream_client, &cl[i]);
	}
	long bytes = 0;
	for (int i = 0; i < n; i++) {
		pthread_join(sv[i], NULL);
		pthread_join(cl[i].th, NULL);
		bytes += cl[i].bytes;
	}
	double el = now() - t0;
	printf("RESULT mode=stream clients=%d duration=%.3f bytes=%ld mbps=%.1f errors=0\n", n, el,
	    bytes, bytes / el / 1e6);
	return bytes > 0 ? 0 : 1;
}

/* ------------------------------------------------------------ ideal server */

static char *ideal_msg, *ideal_list, *ideal_uidl, ideal_stat[64];
static size_t ideal_msg_len, ideal_list_len, ideal_uidl_len;
static int ideal_lfd;

static void
ideal_build(void)
{
	/* body: 76-octet lines, every 50th starting with a (stuffed) dot */
	size_t cap = opt_size + opt_size / 20 + 256;
	char *body = malloc(cap);
	size_t n = 0, wire = 0;
	int ln = 0;
	while (wire < (size_t)opt_size) {
		size_t want = opt_size - wire;
		size_t len = want >= 78 ? 76 : (want > 2 ? want - 2 : 0);
		int dot = (ln++ % 50 == 7) && len > 0;
		if (dot)
			body[n++] = '.';
		for (size_t i = 0; i < len; i++)
			body[n++] = dot && i == 0 ? '.' : 'a' + (i + ln) % 26;
		body[n++] = '\r';
		body[n++] = '\n';
		wire += len + 2;
	}
	ideal_msg = malloc(n + 64);
	ideal_msg_len = snprintf(ideal_msg, 64, "+OK %zu octets\r\n", wire);
	memcpy(ideal_msg + ideal_msg_len, body, n);
	ideal_msg_len += n;
	memcpy(ideal_msg + ideal_msg_len, ".\r\n", 3);
	ideal_msg_len += 3;
	free(body);
	ideal_list = malloc(64 + opt_msgs * 40);
	ideal_uidl = malloc(64 + opt_msgs * 40);
	ideal_list_len = sprintf(ideal_list, "+OK %d messages\r\n", opt_msgs);
	ideal_uidl_len = sprintf(ideal_uidl, "+OK\r\n");
	for (int i = 1; i <= opt_msgs; i++) {
		ideal_list_len += sprintf(ideal_list + ideal_list_len, "%d %zu\r\n", i, wire);
		ideal_uidl_len += sprintf(ideal_uidl + ideal_uidl_len, "%d uid%08d\r\n", i, i);
	}
	ideal_list_len += sprintf(ideal_list + ideal_list_len, ".\r\n");
	ideal_uidl_len += sprintf(ideal_uidl + ideal_uidl_len, ".\r\n");
	snprintf(ideal_stat, sizeof ideal_stat, "+OK %d %zu\r\n", opt_msgs, wire * opt_msgs);
}

/* the next connection for a thread-per-connection server, into c; -1 when
 * the deadline has passed or the listener failed */
static int
ideal_accept(struct conn *c)
{
	while (!time_up()) {
		int fd = accept(ideal_lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return -1;
		}
		set_nodelay(fd);
		c->fd = fd;
		c->r = c->w = 0;
		return fd;
	}
	return -1;
}

static void *
ideal_thread(void *arg)
{
	(void)arg;
	struct conn c;
	c.cap = 4096;
	c.buf = malloc(c.cap);
	c.ssl = NULL;
	int fd;
	while ((fd = ideal_accept(&c)) >= 0) {
		static const char greet[] = "+OK ideal POP3 server ready\r\n";
		if (conn_write(&c, greet, sizeof greet - 1) < 0)
			goto done;
		char *line;
		while ((line = conn_line(&c))) {
			const void *out = "+OK\r\n";
			size_t len = 5;
			int quit = 0;
			if (strncasecmp(line, "RETR", 4) == 0 || strncasecmp(line, "TOP", 3) == 0) {
				out = ideal_msg;
				len = ideal_msg_len;
			} else if (strcasecmp(line, "LIST") == 0) {
				out = ideal_list;
				len = ideal_list_len;
			} else if (strcasecmp(line, "UIDL") == 0) {
				out = ideal_uidl;
				len = ideal_uidl_len;
			} else if (strncasecmp(line, "STAT", 4) == 0) {
				out = ideal_stat;
				len = strlen(ideal_stat);
			} else if (strncasecmp(line, "QUIT", 4) == 0) {
				quit = 1;
			}
			if (conn_write(&c, out, len) < 0 || quit)
				break;
		}
done:
		close(fd);
	}
	free(c.buf);
	return NULL;
}

static void
on_term(int sig)
{
	(void)sig;
	atomic_store(&stop_flag, 1);
	close(ideal_lfd); /* wakes nothing on Linux; the deadline bounds us */
	_exit(0);
}

/* the listening socket of ideal-server and file-server; SIGTERM ends them */
static void
ideal_listen(void)
{
	ideal_lfd = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(ideal_lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(ideal_lfd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 ||
	    listen(ideal_lfd, 1024) < 0)
		die("bind %s:%d: %s", opt_host, opt_port, strerror(errno));
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
}

static int
run_ideal(void)
{
	ideal_build();
	ideal_listen();
	int n = opt_clients < 1 ? 1 : opt_clients;
	pthread_t *th = calloc(n, sizeof *th);
	for (int i = 0; i < n; i++)
		pthread_create(&th[i], NULL, ideal_thread, NULL);
	fprintf(stderr, "pop3load: ideal server on %s:%d, %d threads\n", opt_host, opt_port, n);
	/* bounded: the deadline ends the process even if threads sit in accept */
	while (!time_up())
		usleep(50000);
	_exit(0);
}

/* ------------------------------------------------------------ file server */

/*
 * The floor for a Maildir server: what no server can skip to answer RETR
 * from a file (open, read, close, the CRLF/dot-stuffing conversion, one
 * send), with nothing else: no event loop, no index, no per-session state,
 * one thread per connection blocking in read and write, every user served
 * the same directory. Its CPU per RETR and MB/s bound what popboxd can
 * reach on this machine (bench/README.md).
 */
struct fmsg {
	char *name;
	size_t size;  /* on disk */
	size_t wire;  /* its size as LIST gives it: CRLF line ends, no stuffed dots */
};
/* one maildrop, loaded at start */
struct fbox {
	char *user;
	int dirfd;
	struct fmsg *msgs;
	int n;
	char *list, *uidl, stat[64];
	size_t list_len, uidl_len;
};
static struct fbox *fboxes;
static int fnboxes;

static int
fmsg_cmp(const void *a, const void *b)
{
	return strcmp(((const struct fmsg *)a)->name, ((const struct fmsg *)b)->name);
}

#define FILE_CHUNK (64 * 1024)

/*
 * RETR message m of a maildrop whose cur/ is dirfd: open, pread FILE_CHUNK
 * at a time (one pread for a small message), convert, write to c (NULL:
 * only count). The status line goes out with the first piece and the
 * terminator with the last, so a message of up to FILE_CHUNK octets is one
 * read and one write. 0, or -1 if the file cannot be read in full or the
 * write fails.
 */
static int
file_retr(int dirfd, const struct fmsg *m, char *in, char *out, struct conn *c, size_t *wire_r)
{
	int fd = openat(dirfd, m->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t o = (size_t)snprintf(out, 64, "+OK %zu octets\r\n", m->wire);
	struct wire_encoder e;
	wire_encoder_init(&e, -1);
	size_t off = 0;
	int rc = 0;
	while (off < m->size) {
		size_t want = m->size - off < FILE_CHUNK ? m->size - off : FILE_CHUNK;
		ssize_t got = pread(fd, in, want, (off_t)off);
		if (got <= 0) {
			rc = -1;
			break;
		}
		off += (size_t)got;
		o += wire_encode(&e, in, (size_t)got, out + o);
		if (off < m->size && o >= FILE_CHUNK) {
			if (c && conn_write(c, out, o) < 0) {
				rc = -1;
				break;
			}
			o = 0;
		}
	}
	close(fd);
	if (rc < 0)
		return -1;
	o += wire_encode_finish(&e, out + o);
	memcpy(out + o, ".\r\n", 3);
	if (c && conn_write(c, out, o + 3) < 0)
		return -1;
	if (wire_r)
		*wire_r = e.emitted - e.stuffed;
	return 0;
}

static void
file_load(struct fbox *bx, const char *maildir)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/cur", maildir);
	bx->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (bx->dirfd < 0)
		die("%s: %s", path, strerror(errno));
	DIR *d = fdopendir(dup(bx->dirfd));
	if (!d)
		die("%s: %s", path, strerror(errno));
	int cap = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		struct stat st;
		if (de->d_name[0] == '.' || fstatat(bx->dirfd, de->d_name, &st, 0) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (bx->n == cap) {
			cap = cap ? 2 * cap : 1024;
			bx->msgs = realloc(bx->msgs, cap * sizeof *bx->msgs);
			if (!bx->msgs)
				die("out of memory");
		}
		bx->msgs[bx->n].name = strdup(de->d_name);
		bx->msgs[bx->n].size = (size_t)st.st_size;
		bx->msgs[bx->n].wire = 0;
		bx->n++;
	}
	closedir(d);
	if (bx->n == 0)
		die("%s: no messages", path);
	qsort(bx->msgs, bx->n, sizeof *bx->msgs, fmsg_cmp);
	char *in = malloc(FILE_CHUNK), *out = malloc(WIRE_ENCODE_MAX(FILE_CHUNK) + 96);
	if (!in || !out)
		die("out of memory");
	size_t total = 0;
	for (int i = 0; i < bx->n; i++) {
		if (file_retr(bx->dirfd, &bx->msgs[i], in, out, NULL, &bx->msgs[i].wire) < 0)
			die("%s: %s", bx->msgs[i].name, strerror(errno));
		total += bx->msgs[i].wire;
	}
	free(in);
	free(out);
	bx->list = malloc(64 + (size_t)bx->n * 40);
	bx->uidl = malloc(64 + (size_t)bx->n * 300);
	if (!bx->list || !bx->uidl)
		die("out of memory");
	bx->list_len = sprintf(bx->list, "+OK %d messages\r\n", bx->n);
	bx->uidl_len = sprintf(bx->uidl, "+OK\r\n");
	for (int i = 0; i < bx->n; i++) {
		bx->list_len += sprintf(bx->list + bx->list_len, "%d %zu\r\n", i + 1, bx->msgs[i].wire);
		bx->uidl_len += sprintf(bx->uidl + bx->uidl_len, "%d %.*s\r\n", i + 1,
		    (int)strcspn(bx->msgs[i].name, ":"), bx->msgs[i].name);
	}
	bx->list_len += sprintf(bx->list + bx->list_len, ".\r\n");
	bx->uidl_len += sprintf(bx->uidl + bx->uidl_len, ".\r\n");
	snprintf(bx->stat, sizeof bx->stat, "+OK %d %zu\r\n", bx->n, total);
}

/* -M DIR: one maildrop for every user; -M 'ROOT/%u' with -u PFX -U N: the
 * maildrops of users PFX0..PFX{N-1}, chosen by USER */
static void
file_build(void)
{
	if (!opt_maildir)
		die("file-server needs -M MAILDIR");
	const char *pct = strstr(opt_maildir, "%u");
	fnboxes = pct ? (opt_nusers > 0 ? opt_nusers : 1) : 1;
	fboxes = calloc(fnboxes, sizeof *fboxes);
	if (!fboxes)
		die("out of memory");
	for (int i = 0; i < fnboxes; i++) {
		char user[256], dir[4096];
		snprintf(user, sizeof user, "%s%d", opt_userpfx, i);
		if (pct)
			snprintf(dir, sizeof dir, "%.*s%s%s", (int)(pct - opt_maildir), opt_maildir, user,
			    pct + 2);
		else
			snprintf(dir, sizeof dir, "%s", opt_maildir);
		fboxes[i].user = strdup(user);
		file_load(&fboxes[i], dir);
	}
}

/* answer one command line; -1: close the connection */
static int
file_command(struct conn *c, struct fbox **bxp, char *line, char *in, char *out)
{
	struct fbox *bx = *bxp;
	const void *o = "+OK\r\n";
	size_t len = 5;
	int quit = 0;
	if (strncasecmp(line, "RETR ", 5) == 0) {
		int k = atoi(line + 5);
		if (k >= 1 && k <= bx->n)
			return file_retr(bx->dirfd, &bx->msgs[k - 1], in, out, c, NULL);
		o = "-ERR no such message\r\n";
		len = strlen(o);
	} else if (strncasecmp(line, "USER ", 5) == 0) {
		for (int i = 0; i < fnboxes; i++)
			if (strcmp(fboxes[i].user, line + 5) == 0)
				*bxp = &fboxes[i];
	} else if (strcasecmp(line, "LIST") == 0) {
		o = bx->list;
		len = bx->list_len;
	} else if (strcasecmp(line, "UIDL") == 0) {
		o = bx->uidl;
		len = bx->uidl_len;
	} else if (strncasecmp(line, "STAT", 4) == 0) {
		o = bx->stat;
		len = strlen(bx->stat);
	} else if (strncasecmp(line, "QUIT", 4) == 0) {
		quit = 1;
	}
	return conn_write(c, o, len) < 0 || quit ? -1 : 0;
}

static const char file_greet[] = "+OK file POP3 server ready\r\n";

/* a thread per connection, blocking in read */
static void *
file_thread(void *arg)
{
	(void)arg;
	struct conn c;
	c.cap = 4096;
	c.buf = malloc(c.cap);
	c.ssl = NULL;
	char *in = malloc(FILE_CHUNK), *out = malloc(WIRE_ENCODE_MAX(FILE_CHUNK) + 96);
	if (!c.buf || !in || !out)
		die("out of memory");
	int fd;
	while ((fd = ideal_accept(&c)) >= 0) {
		struct fbox *bx = &fboxes[0];
		if (conn_write(&c, file_greet, sizeof file_greet - 1) == 0) {
			char *line;
			while ((line = conn_line(&c)) && file_command(&c, &bx, line, in, out) == 0)
				;
		}
		close(fd);
	}
	free(c.buf);
	free(in);
	free(out);
	return NULL;
}

/* -e: an event loop per thread (epoll, every connection of the thread in
 * one loop, as popboxd's workers): on a readable socket one read, then
 * every complete line in the buffer is answered. Sockets stay blocking, so
 * a reply larger than the socket buffer blocks the loop until it is sent:
 * fair for 4 KiB messages and for one client. */
struct econn {
	struct conn c;
	struct fbox *bx;
};

static void *
file_loop_thread(void *arg)
{
	(void)arg;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ideal_lfd, &ev) < 0)
		die("epoll: %s", strerror(errno));
	char *in = malloc(FILE_CHUNK), *out = malloc(WIRE_ENCODE_MAX(FILE_CHUNK) + 96);
	if (!in || !out)
		die("out of memory");
	struct epoll_event evs[64];
	while (!time_up()) {
		int n = epoll_wait(ep, evs, 64, 200);
		for (int i = 0; i < n; i++) {
			struct econn *e = evs[i].data.ptr;
			if (e == NULL) {
				int fd = accept4(ideal_lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
				if (fd < 0)
					continue;
				/* blocking from here on: see above */
				fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
				set_nodelay(fd);
				e = calloc(1, sizeof *e);
				e->c.fd = fd;
				e->c.cap = 4096;
				e->c.buf = malloc(e->c.cap);
				e->bx = &fboxes[0];
				struct epoll_event cev = { .events = EPOLLIN, .data.ptr = e };
				if (conn_write(&e->c, file_greet, sizeof file_greet - 1) < 0 ||
				    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
					close(fd);
					free(e->c.buf);
					free(e);
				}
				continue;
			}
			struct conn *c = &e->c;
			int bad = 0;
			if (c->r == c->w)
				c->r = c->w = 0;
			ssize_t got = read(c->fd, c->buf + c->w, c->cap - c->w);
			if (got <= 0)
				bad = 1;
			else
				c->w += (size_t)got;
			while (!bad) {
				char *nl = memchr(c->buf + c->r, '\n', c->w - c->r);
				if (!nl) {
					if (c->w == c->cap)
						bad = 1; /* a line longer than the buffer */
					break;
				}
				char *line = c->buf + c->r;
				size_t len = (size_t)(nl - line);
				c->r += len + 1;
				if (len > 0 && line[len - 1] == '\r')
					len--;
				line[len] = '\0';
				bad = file_command(c, &e->bx, line, in, out) < 0;
			}
			if (bad) {
				close(c->fd);   /* leaves the epoll set with it */
				free(c->buf);
				free(e);
			}
		}
	}
	return NULL;
}

static int
run_file_server(void)
{
	file_build();
	ideal_listen();
	if (opt_loop) /* several loops may wake for one connection */
		fcntl(ideal_lfd, F_SETFL, fcntl(ideal_lfd, F_GETFL) | O_NONBLOCK);
	int n = opt_clients < 1 ? 1 : opt_clients;
	pthread_t *th = calloc(n, sizeof *th);
	for (int i = 0; i < n; i++)
		pthread_create(&th[i], NULL, opt_loop ? file_loop_thread : file_thread, NULL);
	fprintf(stderr, "pop3load: file server on %s:%d, %d %s, %d maildrop(s) from %s\n",
	    opt_host, opt_port, n, opt_loop ? "event loops" : "threads", fnboxes, opt_maildir);
	while (!time_up())
		usleep(50000);
	_exit(0);
}

/* ------------------------------------------------------------ main */

static void
usage(void)
{
	fprintf(stderr,
	    "usage: pop3load sessions|tls|retr|idle|bigbox|stream|ideal-server [-H host] [-p port]\n"
	    "       [-c clients] [-d seconds] [-n count] [-u userprefix] [-U nusers] [-o useroffset]\n"
	    "       [-P password] [-T|-E] [-R none|ticket|cache] [-G groups] [-k sessions]\n"
	    "       [-r readyfile] [-m msgs] [-s size] [-S] [-M maildir]\n"
	    "       pop3load file-server -M MAILDIR [-u pfx -U n] [-e] [-p port] [-c threads] [-d seconds]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *mode = argv[1];
	int ch;
	optind = 2;
	while ((ch = getopt(argc, argv, "H:p:c:d:n:u:U:o:P:TER:G:k:r:m:s:SM:e")) != -1) {
		switch (ch) {
		case 'H': opt_host = optarg; break;
		case 'p': opt_port = atoi(optarg); break;
		case 'c': opt_clients = atoi(optarg); break;
		case 'd': opt_duration = atof(optarg); break;
		case 'n': opt_count = atol(optarg); break;
		case 'u': opt_userpfx = optarg; break;
		case 'U': opt_nusers = atoi(optarg); break;
		case 'o': opt_useroff = atoi(optarg); break;
		case 'P': opt_password = optarg; break;
		case 'T': opt_tls = 1; break;
		case 'E': opt_tls = 2; break;
		case 'R':
			if (strcmp(optarg, "none") == 0)
				opt_resume = RESUME_NONE;
			else if (strcmp(optarg, "ticket") == 0)
				opt_resume = RESUME_TICKET;
			else if (strcmp(optarg, "cache") == 0)
				opt_resume = RESUME_CACHE;
			else
				usage();
			break;
		case 'G': opt_groups = optarg; break;
		case 'k': opt_sessions = atoi(optarg); break;
		case 'r': opt_ready = optarg; break;
		case 'm': opt_msgs = atoi(optarg); break;
		case 'M': opt_maildir = optarg; break;
		case 'e': opt_loop = 1; break;
		case 's': opt_size = atol(optarg); break;
		case 'S': opt_srcaddr = 1; break;
		default: usage();
		}
	}
	if (opt_clients < 1 || opt_duration <= 0 || opt_duration > 3600)
		die("need -c >= 1 and 0 < -d <= 3600");
	if (strcmp(mode, "tls") == 0 && opt_tls == 0)
		opt_tls = 1;
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (opt_tls) {
		client_ctx = SSL_CTX_new(TLS_client_method());
		SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
		SSL_CTX_set_session_cache_mode(client_ctx, SSL_SESS_CACHE_CLIENT);
		if (opt_resume == RESUME_CACHE) {
			/* session IDs: TLS 1.2 without the ticket extension */
			SSL_CTX_set_max_proto_version(client_ctx, TLS1_2_VERSION);
			SSL_CTX_set_options(client_ctx, SSL_OP_NO_TICKET);
		}
		if (opt_groups && SSL_CTX_set1_groups_list(client_ctx, opt_groups) != 1)
			die("-G %s: unknown group", opt_groups);
	}
	resolve();
	t_deadline = now() + opt_duration;

	if (strcmp(mode, "ideal-server") == 0)
		return run_ideal();
	if (strcmp(mode, "file-server") == 0)
		return run_file_server();
	if (strcmp(mode, "stream") == 0)
		return run_stream();
	if (strcmp(mode, "idle") == 0)
		return run_idle();
	if (strcmp(mode, "bigbox") == 0)
		return run_bigbox();

	void *(*fn)(void *);
	if (strcmp(mode, "sessions") == 0 || strcmp(mode, "tls") == 0)
		fn = sessions_thread;
	else if (strcmp(mode, "retr") == 0)
		fn = retr_thread;
	else
		usage();

	struct worker *w = calloc(opt_clients, sizeof *w);
	double t0 = now();
	for (int i = 0; i < opt_clients; i++) {
		w[i].idx = i;
		pthread_create(&w[i].th, NULL, fn, &w[i]);
	}
	struct lat all = { 0 };
	long ops = 0, errs = 0, resumed = 0, bytes = 0;
	for (int i = 0; i < opt_clients; i++) {
		pthread_join(w[i].th, NULL);
		ops += w[i].ops + w[i].msgs;
		errs += w[i].errors;
		resumed += w[i].resumed;
		bytes += w[i].bytes;
		lat_merge(&all, &w[i].lat);
		free(w[i].lat.v);
	}
	double el = now() - t0;
	printf("RESULT mode=%s clients=%d duration=%.3f ops=%ld rate=%.1f errors=%ld", mode,
	    opt_clients, el, ops, ops / el, errs);
	if (strcmp(mode, "retr") == 0)
		printf(" bytes=%ld mbps=%.1f", bytes, bytes / el / 1e6);
	if (opt_tls)
		printf(" resumed=%ld%s", resumed, tls_desc);
	lat_print(&all, "");
	printf("\n");
	free(all.v);
	free(w);
	return ops > 0 && errs == 0 ? 0 : 1;
}
