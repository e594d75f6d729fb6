/* TLS contexts for popboxd: modern defaults, server cipher preference, ALPN
 * "pop3" (RFC 8314 §7), certificate and key from memory. */
#include "server/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "common/base64.h"
#include "common/log.h"
#include "server/limits_popboxd.h"

/* PEM files beyond POPBOXD_PEM_MAX (limits_popboxd.h) are refused: the
 * text is sent to the workers in one message at reload. */
/* TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are all fine
 * and keep OpenSSL's defaults. */
#define TLS_CIPHERS_12 "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!SHA1:!SHA256:!SHA384"
/* Server-side session cache: resumption saves a full handshake per reconnect
 * of the same client (phones poll every few minutes). */
#define TLS_SESSION_CACHE_SIZE 20000
#define TLS_SESSION_TIMEOUT_SECONDS 3600

/* OpenSSL's allocation functions (tls_wipe_freed_memory): every block is
 * wiped before it goes back to malloc, and a realloc moves the data to a
 * new block and wipes the old one. */
static void *
tls_mem_malloc(size_t size, const char *file, int line)
{
	return malloc(size);
}

static void
tls_mem_free(void *p, const char *file, int line)
{
	if (p == NULL)
		return;
	secure_wipe(p, malloc_usable_size(p));
	free(p);
}

static void *
tls_mem_realloc(void *p, size_t size, const char *file, int line)
{
	if (p == NULL)
		return malloc(size);
	if (size == 0) {
		tls_mem_free(p, file, line);
		return NULL;
	}
	size_t old = malloc_usable_size(p);
	void *q = malloc(size);
	if (q == NULL)
		return NULL;
	memcpy(q, p, old < size ? old : size);
	tls_mem_free(p, file, line);
	return q;
}

bool
tls_wipe_freed_memory(void)
{
	return CRYPTO_set_mem_functions(tls_mem_malloc, tls_mem_realloc, tls_mem_free) == 1;
}

static char *
openssl_error_string(void)
{
	unsigned long e = ERR_get_error();
	char buf[256];
	if (e == 0)
		return xstrdup("unknown OpenSSL error");
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return xstrdup(buf);
}

static char *
read_pem_file(const char *path, bool is_key, char **error_r)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		*error_r = xasprintf("%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0) {
		*error_r = xasprintf("%s: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	if (is_key && (st.st_mode & (S_IROTH | S_IWOTH))) {
		*error_r = xasprintf("tls_key %s is accessible by other users (mode %03o); "
		    "run: chmod o-rwx %s", path, (unsigned)(st.st_mode & 0777), path);
		close(fd);
		return NULL;
	}
	char *pem;
	int r = util_read_file_bounded(fd, path, POPBOXD_PEM_MAX, is_key ? UTIL_READ_SECRET : 0,
	    &pem, NULL, error_r);
	close(fd);
	return r < 0 ? NULL : pem;
}

int
tls_read_pem(const struct config *config, char **cert_r, char **key_r, char **error_r)
{
	*cert_r = read_pem_file(config->tls_cert, false, error_r);
	if (*cert_r == NULL)
		return -1;
	*key_r = read_pem_file(config->tls_key, true, error_r);
	if (*key_r == NULL) {
		free(*cert_r);
		*cert_r = NULL;
		return -1;
	}
	return 0;
}

static int
alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
    unsigned int inlen, void *arg)
{
	static const unsigned char pop3[] = "\x04pop3";
	unsigned char *sel;
	if (SSL_select_next_proto(&sel, outlen, pop3, sizeof(pop3) - 1, in, inlen) ==
	    OPENSSL_NPN_NEGOTIATED) {
		*out = sel;
		return SSL_TLSEXT_ERR_OK;
	}
	/* A client that offers only other protocols is talking to the wrong
	 * port; go on without ALPN rather than guess. */
	return SSL_TLSEXT_ERR_NOACK;
}

SSL_CTX *
tls_server_ctx_new(const char *cert_pem, const char *key_pem, const char *min_version, char **error_r)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	BIO *bio = NULL;
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;

	if (ctx == NULL)
		goto fail;
	int minv = (min_version != NULL && strcmp(min_version, "TLSv1.3") == 0) ? TLS1_3_VERSION : TLS1_2_VERSION;
	if (!SSL_CTX_set_min_proto_version(ctx, minv))
		goto fail;
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_NO_COMPRESSION);
	if (!SSL_CTX_set_cipher_list(ctx, TLS_CIPHERS_12))
		goto fail;
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_sess_set_cache_size(ctx, TLS_SESSION_CACHE_SIZE);
	SSL_CTX_set_timeout(ctx, TLS_SESSION_TIMEOUT_SECONDS);
	static const unsigned char sid_ctx[] = "popboxd";
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
	/* Partial writes and moving buffers: bufferevent_openssl needs both. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	    SSL_MODE_RELEASE_BUFFERS);
	/* No read-ahead, although it halves the read() calls of a handshake
	 * (15.3 -> 7.6 per session): libevent 2.1's bufferevent_openssl only
	 * asks SSL_pending(), which does not count whole records waiting in
	 * the read-ahead buffer, so a client's second pipelined record
	 * waited there for socket data that never came (issue 17, tried). */
	/* TLS 1.3: one session ticket per handshake, not OpenSSL's two: a
	 * POP3 client opens one connection at a time, and each ticket costs
	 * an encryption and a write. */
	SSL_CTX_set_num_tickets(ctx, 1);

	bio = BIO_new_mem_buf(cert_pem, -1);
	if (bio == NULL || (cert = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL)) == NULL) {
		*error_r = xasprintf("tls_cert: no certificate found in PEM data");
		goto fail_msg;
	}
	if (!SSL_CTX_use_certificate(ctx, cert))
		goto fail;
	X509 *ca;
	while ((ca = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		if (!SSL_CTX_add_extra_chain_cert(ctx, ca)) {
			X509_free(ca);
			goto fail;
		}
	}
	ERR_clear_error(); /* the loop ends with "no start line" */
	BIO_free(bio);
	bio = BIO_new_mem_buf(key_pem, -1);
	if (bio == NULL || (key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)) == NULL) {
		*error_r = xasprintf("tls_key: no private key found in PEM data (encrypted keys are not supported)");
		goto fail_msg;
	}
	if (!SSL_CTX_use_PrivateKey(ctx, key)) {
		char *why = openssl_error_string();
		*error_r = xasprintf("tls_key does not match the certificate in tls_cert (%s)", why);
		free(why);
		goto fail_msg;
	}
	if (!SSL_CTX_check_private_key(ctx)) {
		*error_r = xasprintf("tls_key does not match the certificate in tls_cert");
		goto fail_msg;
	}
	X509_free(cert);
	EVP_PKEY_free(key);
	BIO_free(bio);
	return ctx;
fail:
	*error_r = openssl_error_string();
fail_msg:
	ERR_clear_error();
	X509_free(cert);
	EVP_PKEY_free(key);
	BIO_free(bio);
	SSL_CTX_free(ctx);
	return NULL;
}

char *
tls_channel_binding_exporter(SSL *ssl)
{
	unsigned char cb[32];
	static const char label[] = "EXPORTER-Channel-Binding";
	if (SSL_export_keying_material(ssl, cb, sizeof(cb), label, sizeof(label) - 1, NULL, 0, 0) != 1)
		return NULL;
	return base64_encode(cb, sizeof(cb));
}

char *
tls_channel_binding_unique(SSL *ssl)
{
	unsigned char buf[EVP_MAX_MD_SIZE];
	if (SSL_version(ssl) >= TLS1_3_VERSION)
		return NULL;  /* RFC 9266: tls-unique is undefined for TLS 1.3 */
	/* For the server, tls-unique is the first Finished message: the
	 * client's, unless the session was resumed. */
	size_t n = SSL_session_reused(ssl) ? SSL_get_finished(ssl, buf, sizeof(buf))
	    : SSL_get_peer_finished(ssl, buf, sizeof(buf));
	if (n == 0 || n > sizeof(buf))
		return NULL;
	return base64_encode(buf, n);
}
