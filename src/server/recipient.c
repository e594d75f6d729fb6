/* Delivery address -> user (recipient.h). */
#include "server/recipient.h"
#include "server/limits_popboxd.h"
#include "common/util.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static void
recipient_add(char *out[RECIPIENT_CANDIDATES], size_t *n, char *name)
{
	for (size_t i = 0; i < *n; i++) {
		if (strcmp(out[i], name) == 0) {
			free(name);
			return;
		}
	}
	out[(*n)++] = name;
}

size_t
recipient_candidates(const char *address, const char *delimiters,
    char *out[RECIPIENT_CANDIDATES])
{
	size_t len = strlen(address), n = 0;

	if (len == 0 || len > POPBOXD_USER_MAX)
		return 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)address[i];
		if (c <= 0x20 || c == 0x7f)
			return 0;
	}
	const char *at = strrchr(address, '@');
	size_t local_len = at != NULL ? (size_t)(at - address) : len;
	if (delimiters != NULL && *delimiters != '\0') {
		size_t cut = strcspn(address, delimiters);
		if (cut < local_len)
			local_len = cut;
	}
	if (local_len == 0)
		return 0;
	if (at != NULL && at[1] != '\0') {
		recipient_add(out, &n, xasprintf("%.*s%s", (int)local_len, address, at));
		char *lower = xasprintf("%.*s%s", (int)local_len, address, at);
		for (char *c = lower + local_len; *c != '\0'; c++)
			*c = (char)tolower((unsigned char)*c);
		recipient_add(out, &n, lower);
	}
	recipient_add(out, &n, xstrndup(address, local_len));
	return n;
}

const struct passwd_entry *
recipient_lookup(const struct passwd_db *db, const char *address, const char *delimiters)
{
	char *names[RECIPIENT_CANDIDATES];
	const struct passwd_entry *e = NULL;
	size_t n = recipient_candidates(address, delimiters, names);

	for (size_t i = 0; i < n; i++) {
		if (e == NULL)
			e = passwd_db_lookup(db, names[i]);
		free(names[i]);
	}
	return e;
}

bool
recipient_system_account_ok(const char *name, uid_t uid, unsigned first_valid_uid,
    const char *deny_users)
{
	if (uid == 0 || uid < first_valid_uid)
		return false;
	char *needle = xasprintf(" %s ", name);
	bool denied = deny_users != NULL && strstr(deny_users, needle) != NULL;
	free(needle);
	return !denied;
}
