#include "client/conn.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

bool fetch_trace;

bool
fetch_error_set(struct fetch_error *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err->code != 0)
		return false;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return false;
}

static double
mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static bool
deadline_error(const struct conn *c, struct fetch_error *err)
{
	return fetch_error_set(err, EX_TEMPFAIL,
	    "the session with the server took longer than its deadline of %ld s "
	    "(deadline); dropped it without QUIT. What was delivered is kept; the "
	    "next run goes on", c->deadline_sec);
}

/* Set both socket timeouts to ms milliseconds (if not already). */
static void
conn_set_timeouts(struct conn *c, long ms)
{
	if (ms == c->armed_ms)
		return;
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	(void)setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	c->armed_ms = ms;
}

/* Before each blocking read, write or handshake: false (err set) once the
 * deadline has passed; when it is nearer than the per-operation timeout,
 * the socket timeouts are shortened to it, so that no single wait (a
 * server sending a byte just before each timeout) runs past it. */
static bool
conn_arm(struct conn *c, struct fetch_error *err)
{
	if (c->deadline_sec == 0)
		return true;
	double left = c->deadline - mono_now();
	if (left <= 0)
		return deadline_error(c, err);
	long ms = (long)c->timeout * 1000;
	if (left * 1000 < (double)ms)
		ms = (long)(left * 1000) + 1;
	conn_set_timeouts(c, ms);
	return true;
}

/* A socket timeout just expired: was it the deadline's? */
static bool
conn_deadline_hit(const struct conn *c)
{
	return c->deadline_sec != 0 && c->armed_ms < (long)c->timeout * 1000;
}

static bool
connect_one(int fd, const struct sockaddr *sa, socklen_t salen, int timeout)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return false;
	if (connect(fd, sa, salen) < 0) {
		if (errno != EINPROGRESS)
			return false;
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		int r;
		do
			r = poll(&pfd, 1, timeout * 1000);
		while (r < 0 && errno == EINTR);
		if (r == 0) {
			errno = ETIMEDOUT;
			return false;
		}
		if (r < 0)
			return false;
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
			return false;
		if (soerr != 0) {
			errno = soerr;
			return false;
		}
	}
	if (fcntl(fd, F_SETFL, fl) < 0)
		return false;
	return true;
}

struct conn *
conn_connect(const char *host, const char *port, int timeout, long deadline,
    struct fetch_error *err)
{
	struct addrinfo hints, *res = NULL;
	int r, fd = -1, saved = 0;
	double end = mono_now() + (double)deadline;
	bool late = false;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	r = getaddrinfo(host, port, &hints, &res);
	if (r != 0) {
		fetch_error_set(err, r == EAI_AGAIN ? EX_TEMPFAIL : EX_NOHOST,
		    "cannot resolve %s: %s", host, gai_strerror(r));
		return NULL;
	}
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		int wait = timeout;
		if (deadline != 0) {
			double left = end - mono_now();
			if (left <= 0) {
				late = true;
				break;
			}
			if (left < wait)
				wait = (int)left + 1;
		}
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			saved = errno;
			continue;
		}
		if (connect_one(fd, ai->ai_addr, ai->ai_addrlen, wait))
			break;
		saved = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		if (late)
			fetch_error_set(err, EX_TEMPFAIL, "cannot connect to %s port %s within "
			    "the deadline of %ld s (deadline)", host, port, deadline);
		else
			fetch_error_set(err, EX_TEMPFAIL, "cannot connect to %s port %s: %s",
			    host, port, strerror(saved));
		return NULL;
	}
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	struct conn *c = xcalloc(1, sizeof(*c));
	c->fd = fd;
	c->timeout = timeout;
	c->deadline_sec = deadline;
	c->deadline = end;
	c->armed_ms = -1;
	conn_set_timeouts(c, (long)timeout * 1000);
	return c;
}

/* What the verify callback saw: the first failure and the server's own
 * certificate, so the error message can say what was wrong and how to
 * trust it. One handshake at a time in this program. */
static struct {
	int error;
	int depth;
	char subject[256];
	char issuer[256];
	char not_after[64];
	char fingerprint[3 * 32];
} verify_seen;

static void
cert_fingerprint(X509 *cert, char *out, size_t size)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	out[0] = '\0';
	if (!X509_digest(cert, EVP_sha256(), md, &n))
		return;
	size_t o = 0;
	for (unsigned i = 0; i < n && o + 4 <= size; i++)
		o += (size_t)snprintf(out + o, size - o, "%s%02X", i ? ":" : "", md[i]);
}

static void
cert_describe(X509 *cert)
{
	X509_NAME_oneline(X509_get_subject_name(cert), verify_seen.subject,
	    sizeof(verify_seen.subject));
	X509_NAME_oneline(X509_get_issuer_name(cert), verify_seen.issuer,
	    sizeof(verify_seen.issuer));
	verify_seen.not_after[0] = '\0';
	BIO *b = BIO_new(BIO_s_mem());
	if (b != NULL) {
		if (ASN1_TIME_print(b, X509_get0_notAfter(cert))) {
			int n = BIO_read(b, verify_seen.not_after, sizeof(verify_seen.not_after) - 1);
			verify_seen.not_after[n > 0 ? n : 0] = '\0';
		}
		BIO_free(b);
	}
	cert_fingerprint(cert, verify_seen.fingerprint, sizeof(verify_seen.fingerprint));
}

static int
verify_callback(int ok, X509_STORE_CTX *ctx)
{
	X509 *leaf = X509_STORE_CTX_get0_cert(ctx);
	if (leaf != NULL && verify_seen.fingerprint[0] == '\0')
		cert_describe(leaf);
	if (!ok && verify_seen.error == X509_V_OK) {
		verify_seen.error = X509_STORE_CTX_get_error(ctx);
		verify_seen.depth = X509_STORE_CTX_get_error_depth(ctx);
	}
	return ok;
}

static const char *
verify_reason(int e)
{
	switch (e) {
	case X509_V_ERR_CERT_HAS_EXPIRED:
		return "the certificate has expired";
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return "the certificate is not yet valid";
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
		return "the certificate is self-signed (unknown issuer)";
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		return "the certificate was issued by an unknown issuer (not in the trust store)";
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		return "name mismatch: the certificate is not valid for this host name";
	case X509_V_ERR_CERT_REVOKED:
		return "the certificate has been revoked";
	default:
		return X509_verify_cert_error_string(e);
	}
}

/* Normalise a fingerprint to upper-case hex without separators. */
static bool
fingerprint_normalise(const char *in, char *out, size_t size)
{
	size_t o = 0;
	for (; *in != '\0'; in++) {
		if (*in == ':' || *in == ' ')
			continue;
		if (!((*in >= '0' && *in <= '9') || (*in >= 'a' && *in <= 'f') ||
		    (*in >= 'A' && *in <= 'F')))
			return false;
		if (o + 1 >= size)
			return false;
		out[o++] = (char)((*in >= 'a' && *in <= 'f') ? *in - 32 : *in);
	}
	out[o] = '\0';
	return o == 64;
}

static bool
is_ip_literal(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static void
openssl_errors(char *out, size_t size)
{
	unsigned long e = ERR_get_error();
	if (e == 0)
		snprintf(out, size, "%s", errno ? strerror(errno) : "connection closed");
	else
		ERR_error_string_n(e, out, size);
	ERR_clear_error();
}

bool
conn_start_tls(struct conn *c, const struct tls_options *opt, struct fetch_error *err)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char pin[65] = "";

	if (ctx == NULL)
		return fetch_error_set(err, EX_SOFTWARE, "cannot create TLS context");
	c->ssl_ctx = ctx;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	if (opt->fingerprint != NULL && !fingerprint_normalise(opt->fingerprint, pin, sizeof(pin)))
		return fetch_error_set(err, EX_CONFIG,
		    "tls_fingerprint must be a SHA-256 fingerprint: 64 hex digits, colons allowed");
	if (opt->trust_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, opt->trust_file, NULL) != 1)
			return fetch_error_set(err, EX_CONFIG,
			    "cannot load tls_trust_file %s (PEM certificates expected)",
			    opt->trust_file);
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		return fetch_error_set(err, EX_CONFIG, "cannot load the system trust store");
	}
	/* With a pin the pin is the trust decision (like mpop and fetchmail);
	 * with --insecure nothing is checked. Otherwise chain and name. */
	bool verify = pin[0] == '\0' && !opt->insecure;
	SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, verify_callback);

	SSL *ssl = SSL_new(ctx);
	if (ssl == NULL)
		return fetch_error_set(err, EX_SOFTWARE, "cannot create TLS session");
	c->ssl = ssl;
	if (!is_ip_literal(opt->host)) {
		SSL_set_tlsext_host_name(ssl, opt->host);
		if (verify)
			SSL_set1_host(ssl, opt->host);
	} else if (verify) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), opt->host);
	}
	SSL_set_fd(ssl, c->fd);
	memset(&verify_seen, 0, sizeof(verify_seen));
	if (!conn_arm(c, err))
		return false;
	errno = 0;
	int r = SSL_connect(ssl);
	if (r != 1) {
		if (verify && verify_seen.error != X509_V_OK) {
			ERR_clear_error();
			return fetch_error_set(err, EX_UNAVAILABLE,
			    "TLS: the certificate of %s is not trusted: %s.\n"
			    "  certificate: subject %s, issuer %s, valid until %s\n"
			    "  SHA-256 fingerprint %s\n"
			    "  To trust it, give the issuing CA certificate with tls_trust_file "
			    "(--tls-trust-file FILE), or, after checking the fingerprint with the "
			    "provider, pin it with tls_fingerprint (--tls-fingerprint FP).",
			    opt->host, verify_reason(verify_seen.error), verify_seen.subject,
			    verify_seen.issuer, verify_seen.not_after, verify_seen.fingerprint);
		}
		char e[256];
		int saved = errno;
		openssl_errors(e, sizeof(e));
		if ((saved == EAGAIN || saved == EWOULDBLOCK) && conn_deadline_hit(c))
			return deadline_error(c, err);
		if (saved == EAGAIN || saved == EWOULDBLOCK)
			snprintf(e, sizeof(e), "timed out");
		return fetch_error_set(err, EX_TEMPFAIL, "TLS handshake with %s failed: %s",
		    opt->host, e);
	}
	if (pin[0] != '\0') {
		X509 *cert = SSL_get0_peer_certificate(ssl);
		char fp[3 * 32], got[65];
		if (cert == NULL)
			return fetch_error_set(err, EX_UNAVAILABLE, "TLS: %s sent no certificate",
			    opt->host);
		cert_fingerprint(cert, fp, sizeof(fp));
		if (!fingerprint_normalise(fp, got, sizeof(got)) || strcmp(got, pin) != 0)
			return fetch_error_set(err, EX_UNAVAILABLE,
			    "TLS: the certificate of %s does not match tls_fingerprint: "
			    "it has SHA-256 fingerprint %s", opt->host, fp);
	}
	return true;
}

bool
conn_is_tls(const struct conn *c)
{
	return c->ssl != NULL;
}

const char *
conn_channel_binding(struct conn *c, char **data_b64)
{
	SSL *ssl = c->ssl;
	*data_b64 = NULL;
	if (ssl == NULL)
		return NULL;
	if (SSL_version(ssl) >= TLS1_3_VERSION) {
		static const char label[] = "EXPORTER-Channel-Binding";
		unsigned char cb[32];
		if (SSL_export_keying_material(ssl, cb, sizeof(cb), label, sizeof(label) - 1,
		    NULL, 0, 0) != 1) {
			ERR_clear_error();
			return NULL;
		}
		*data_b64 = base64_encode(cb, sizeof(cb));
		return "tls-exporter";
	}
	if (SSL_get_extms_support(ssl) != 1)
		return NULL;
	/* The first Finished message: ours on a full handshake, the
	 * server's on an abbreviated (resumed) one. */
	unsigned char fin[EVP_MAX_MD_SIZE];
	size_t n = SSL_session_reused(ssl) ? SSL_get_peer_finished(ssl, fin, sizeof(fin)) :
	    SSL_get_finished(ssl, fin, sizeof(fin));
	if (n == 0 || n > sizeof(fin))
		return NULL;
	*data_b64 = base64_encode(fin, n);
	return "tls-unique";
}

const char *
conn_tls_description(struct conn *c)
{
	static char desc[160];
	if (c->ssl == NULL)
		return "";
	snprintf(desc, sizeof(desc), "%s, %s", SSL_get_version(c->ssl),
	    SSL_get_cipher_name(c->ssl));
	return desc;
}

size_t
conn_buffered(const struct conn *c)
{
	return c->end - c->start;
}

void
conn_discard_buffer(struct conn *c)
{
	c->start = c->end = 0;
}

static bool
io_error(const struct conn *c, struct fetch_error *err, int saved, const char *what)
{
	if ((saved == EAGAIN || saved == EWOULDBLOCK) && conn_deadline_hit(c))
		return deadline_error(c, err);
	if (saved == EAGAIN || saved == EWOULDBLOCK)
		return fetch_error_set(err, EX_TEMPFAIL, "timed out %s the server", what);
	return fetch_error_set(err, EX_TEMPFAIL, "connection lost %s the server: %s", what,
	    saved ? strerror(saved) : "closed");
}

bool
conn_write(struct conn *c, const void *data, size_t len, struct fetch_error *err)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n;
		if (!conn_arm(c, err))
			return false;
		errno = 0;
		if (c->ssl != NULL) {
			int r = SSL_write(c->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
			if (r <= 0) {
				int saved = errno;
				ERR_clear_error();
				return io_error(c, err, saved, "writing to");
			}
			n = r;
		} else {
			n = write(c->fd, p, len);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return io_error(c, err, errno, "writing to");
		}
		p += n;
		len -= (size_t)n;
	}
	c->quickack_due = true;
	return true;
}

/* A server with Nagle's algorithm on (no TCP_NODELAY: popa3d, for one)
 * holds back a small reply segment until the previous one is
 * acknowledged. Our pipelined commands leave in groups, and a reply may
 * come in several small writes, so no command is there to carry the ACK:
 * Linux then delays it (up to 40 ms, "pingpong" mode, entered whenever we
 * send soon after receiving) and every such wait stalls the fetch. Before
 * blocking in a read after a write, TCP_QUICKACK leaves that mode: the ACK
 * pending goes out now and the data of the next read is acknowledged as
 * soon as it is read. The kernel re-enters the mode at our next write,
 * hence re-armed after each write (one setsockopt per group of commands).
 * Elsewhere: nothing (the stall is a Linux delayed-ACK matter). */
static void
conn_quickack(struct conn *c)
{
#ifdef TCP_QUICKACK
	if (c->quickack_due) {
		int one = 1;
		(void)setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	}
#endif
	c->quickack_due = false;
}

bool
conn_fill(struct conn *c, struct fetch_error *err)
{
	if (c->start < c->end)
		return true;
	c->start = c->end = 0;
	if (c->eof)
		return io_error(c, err, 0, "reading from");
	conn_quickack(c);
	for (;;) {
		ssize_t n;
		if (!conn_arm(c, err))
			return false;
		errno = 0;
		if (c->ssl != NULL) {
			int r = SSL_read(c->ssl, c->buf, sizeof(c->buf));
			if (r <= 0) {
				int saved = errno;
				int e = SSL_get_error(c->ssl, r);
				ERR_clear_error();
				if (e == SSL_ERROR_ZERO_RETURN)
					saved = 0;
				c->eof = true;
				return io_error(c, err, saved, "reading from");
			}
			n = r;
		} else {
			n = read(c->fd, c->buf, sizeof(c->buf));
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				c->eof = true;
				return io_error(c, err, n < 0 ? errno : 0, "reading from");
			}
		}
		c->end = (size_t)n;
		c->bytes_in += (uint64_t)n;
		return true;
	}
}

bool
conn_read_line(struct conn *c, char *out, size_t size, struct fetch_error *err)
{
	size_t o = 0;
	for (;;) {
		if (!conn_fill(c, err))
			return false;
		char *start = c->buf + c->start;
		size_t avail = c->end - c->start;
		char *nl = memchr(start, '\n', avail);
		size_t take = nl != NULL ? (size_t)(nl - start) : avail;
		if (o + take >= size)
			return fetch_error_set(err, EX_PROTOCOL,
			    "the server sent a line longer than %zu bytes", size - 1);
		memcpy(out + o, start, take);
		o += take;
		if (nl != NULL) {
			c->start += take + 1;
			if (o > 0 && out[o - 1] == '\r')
				o--;
			out[o] = '\0';
			if (memchr(out, '\0', o) != NULL)
				return fetch_error_set(err, EX_PROTOCOL,
				    "the server sent a NUL byte in a response line");
			return true;
		}
		c->start = c->end;
	}
}

void
conn_close(struct conn *c)
{
	if (c == NULL)
		return;
	if (c->ssl != NULL) {
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	if (c->ssl_ctx != NULL)
		SSL_CTX_free(c->ssl_ctx);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}
