/* Server-side TLS set-up (OpenSSL 3). The master reads the PEM files (it may
 * be the only process allowed to) and builds the context before forking, so
 * workers inherit it, session ticket keys included; at reload it sends the PEM
 * text to the workers, which build a new context for new connections while
 * existing connections keep the old one (reference counted by OpenSSL). */
#ifndef POPBOX_TLS_H
#define POPBOX_TLS_H

#include <stdbool.h>

#include <openssl/ssl.h>

#include "server/config.h"

/* Make OpenSSL wipe every block it frees (its allocation functions, set
 * before its first allocation: call first thing in main). OpenSSL frees
 * some copies of a private key it decodes (the DER of a PEM file) without
 * wiping them, and every child forked later inherits the master's heap:
 * the auth process must not find the key there (docs/DESIGN.md, "The auth
 * process"). Returns false when OpenSSL had allocated already. */
bool tls_wipe_freed_memory(void);

/* Read tls_cert and tls_key of config into malloc'd strings. Refuses a key
 * file that others can read or write. Returns 0 or -1 with *error_r. */
int tls_read_pem(const struct config *config, char **cert_r, char **key_r, char **error_r);

/* Build a server context from PEM text (certificate chain, private key),
 * checking that they match. min_version "TLSv1.2" or "TLSv1.3" (NULL = 1.2).
 * Returns NULL with *error_r on failure. */
SSL_CTX *tls_server_ctx_new(const char *cert_pem, const char *key_pem, const char *min_version,
    char **error_r);

/* RFC 9266 tls-exporter channel binding (32 bytes) of an established
 * connection, base64; NULL if not available. */
char *tls_channel_binding_exporter(SSL *ssl);
/* RFC 5929 tls-unique (TLS 1.2 only), base64; NULL if not available. */
char *tls_channel_binding_unique(SSL *ssl);

#endif
