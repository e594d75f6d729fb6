/* The backends behind one interface (deliver.h): lookup, open, close,
 * and what they share (markers, writing a whole buffer). */
#include "client/deliver.h"
#include "client/account.h"
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

static const struct deliver_ops *const backends[] = {
	[DELIVER_MAILDIR] = &deliver_maildir_ops,
	[DELIVER_MBOX] = &deliver_mbox_ops,
	[DELIVER_MDA] = &deliver_mda_ops,
};

const struct deliver_ops *
deliver_backend(int kind)
{
	if (kind < 0 || (size_t)kind >= N_ELEMENTS(backends))
		return NULL;
	return backends[kind];
}

struct deliverer *
deliver_open(int kind, const char *target, const char *account_name, struct fetch_error *err)
{
	const struct deliver_ops *ops = deliver_backend(kind);
	if (ops == NULL) {
		fetch_error_set(err, EX_CONFIG, "no delivery target");
		return NULL;
	}
	struct deliverer *d = ops->create();
	d->ops = ops;
	d->target = xstrdup(target);
	d->account_name = account_name;
	return d;
}

void
deliver_close(struct deliverer *d)
{
	if (d == NULL)
		return;
	char *target = d->target;
	d->ops->destroy(d);
	free(target);
}

bool
deliver_write_all(int fd, const char *data, size_t len, uint64_t *written)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return false;
		data += n;
		len -= (size_t)n;
		if (written != NULL)
			*written += (uint64_t)n;
	}
	return true;
}

void
deliver_marker(const char *account_key, const char *uidl, char out[17])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	/* SHA-256(account key NUL uidl): a UIDL is never used as a path
	 * component (it is server data), only this digest of it is. */
	if (m == NULL || !EVP_DigestInit_ex(m, EVP_sha256(), NULL) ||
	    !EVP_DigestUpdate(m, account_key, strlen(account_key) + 1) ||
	    !EVP_DigestUpdate(m, uidl, strlen(uidl)) || !EVP_DigestFinal_ex(m, md, &n))
		abort();
	EVP_MD_CTX_free(m);
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < 8; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[16] = '\0';
}
