/* Users file parser (passwd_db_parse, src/server/passwd.c) and what the auth
 * process derives from an entry: the mail location (mail_location_expand) and
 * the dummy secret. The users file is trusted, but user names also arrive from
 * the network (USER, AUTH) and are looked up and expanded into paths: the
 * expanded location must never contain a "." or ".." component, a control
 * character, or a path outside the template's prefix.
 * Input: the file text; every "name:" prefix of a line is looked up too. */
#include <string.h>

#include "fuzz_common.h"
#include "common/log.h"
#include "server/passwd.h"

static void
check_location(const char *template, const struct passwd_entry *e)
{
	char *error = NULL;
	char *loc = mail_location_expand(template, e, &error);
	if (loc == NULL) {
		FUZZ_CHECK(error != NULL, "NULL without error");
		free(error);
		return;
	}
	FUZZ_CHECK(error == NULL, "result with error");
	FUZZ_CHECK(strncmp(loc, "maildir:", 8) == 0, "scheme lost: %s", loc);
	const char *path = loc + 8;
	FUZZ_CHECK(path[0] == '/', "relative result %s", loc);
	/* No control byte, from a name or from the home field (README.md,
	 * finding 2, fixed in mail_location_expand). */
	for (const char *p = path; *p; p++)
			FUZZ_CHECK((unsigned char)*p >= 0x20 && *p != 0x7f, "control byte in %s", loc);
	/* every component */
	for (const char *p = path; *p;) {
		while (*p == '/')
			p++;
		const char *q = strchr(p, '/');
		size_t n = q ? (size_t)(q - p) : strlen(p);
		FUZZ_CHECK(!(n == 1 && p[0] == '.') && !(n == 2 && p[0] == '.' && p[1] == '.'),
		    "dot component in %s", loc);
		p += n;
	}
	if (template[8] == '/')   /* fixed prefix: the result stays under it */
		FUZZ_CHECK(strncmp(path, "/var/mail/", 10) == 0, "escaped prefix: %s", loc);
	free(loc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool quiet;
	if (!quiet) {
		log_init("fuzz", false, false);
		quiet = true;
	}
	char *text = fuzz_strndup(data, size);
	struct passwd_db *db = NULL;
	char *error = NULL;
	int r = passwd_db_parse("users", text, &db, &error);
	FUZZ_CHECK(r == 0 && db != NULL, "passwd_db_parse failed: %s", error ? error : "?");
	size_t lines = 1;
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	FUZZ_CHECK(passwd_db_count(db) <= lines, "%zu users from %zu lines", passwd_db_count(db), lines);
	(void)passwd_db_dummy_secret(db);

	/* Look up each line's name field. */
	for (char *line = text, *next; line != NULL && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char *colon = strchr(line, ':');
		if (colon == NULL)
			continue;
		*colon = '\0';
		const struct passwd_entry *e = passwd_db_lookup(db, line);
		if (e == NULL)
			continue;
		FUZZ_CHECK(strcmp(e->user, line) == 0, "lookup of %s gave %s", line, e->user);
		FUZZ_CHECK(e->password && e->uid && e->gid && e->home, "NULL field");
		(void)password_plaintext(e->password);
		check_location("maildir:/var/mail/%d/%n/%u", e);
		check_location("maildir:~/Maildir/%u", e);
	}
	passwd_db_free(db);
	free(text);
	return 0;
}
