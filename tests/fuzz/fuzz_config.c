/* Z7: popboxd.conf parser (config_parse, src/server/config.c). The config is
 * written by root, but a parser crash on a typo is still a denial of service
 * at reload, and the values it accepts set every limit. Properties: success
 * gives a config and no error; failure gives "NAME:LINE: ..." and no config;
 * the values accepted are within the documented bounds.
 * Input: the file text (NULs end it early, as a C string would). */
#include <string.h>

#include "fuzz_common.h"
#include "common/log.h"
#include "server/config.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool quiet;
	if (!quiet) {
		log_init("fuzz", false, false);   /* syslog: warnings are not findings */
		quiet = true;
	}
	char *text = fuzz_strndup(data, size);
	struct config *c = NULL;
	char *error = NULL;
	int r = config_parse("dir/fuzz.conf", text, &c, &error);
	if (r == 0) {
		FUZZ_CHECK(c != NULL && error == NULL, "success without config");
		FUZZ_CHECK(c->users != NULL && c->mail != NULL, "required keys missing");
		FUZZ_CHECK(strncmp(c->mail, "maildir:", 8) == 0 || strncmp(c->mail, "mbox:", 5) == 0,
		    "mail '%s'", c->mail);
		FUZZ_CHECK(c->idle_timeout >= 1 && c->idle_timeout <= 24 * 3600, "idle %u", c->idle_timeout);
		FUZZ_CHECK(c->login_timeout >= 1 && c->login_timeout <= 24 * 3600, "login %u", c->login_timeout);
		FUZZ_CHECK((c->tls_cert == NULL) == (c->tls_key == NULL), "cert without key");
		for (size_t i = 0; i < c->n_listens; i++)
			FUZZ_CHECK(c->listens[i].host != NULL && c->listens[i].port != NULL &&
			    strlen(c->listens[i].port) > 0, "listen %zu", i);
		config_free(c);
	} else {
		FUZZ_CHECK(r == -1 && c == NULL && error != NULL, "failure without error");
		FUZZ_CHECK(strncmp(error, "dir/fuzz.conf:", 14) == 0, "error '%s'", error);
		free(error);
	}
	free(text);
	return 0;
}
