#include "client/deliver.h"
#include "client/account.h"
#include "common/util.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

struct deliverer *
deliver_open(int kind, const char *target, const char *account_name, struct fetch_error *err)
{
	struct deliverer *d = xcalloc(1, sizeof(*d));
	d->fd = d->tmpfd = d->newfd = -1;
	d->target = xstrdup(target);
	d->account_name = account_name;
	switch (kind) {
	case DELIVER_MAILDIR:
		d->ops = &deliver_maildir_ops;
		break;
	case DELIVER_MBOX:
		d->ops = &deliver_mbox_ops;
		break;
	case DELIVER_MDA:
		d->ops = &deliver_mda_ops;
		break;
	default:
		free(d->target);
		free(d);
		fetch_error_set(err, EX_CONFIG, "no delivery target");
		return NULL;
	}
	return d;
}

void
deliver_close(struct deliverer *d)
{
	if (d == NULL)
		return;
	if (d->ops->close != NULL)
		d->ops->close(d);
	free(d->tmp_path);
	free(d->target);
	free(d);
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
