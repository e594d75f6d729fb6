/* dovecot-uidlist (and courierpop3dsizelist) -> UIDLs (uidl_dovecot_parse,
 * uidl_courier_parse, uidl_old_lookup, uidl_dovecot_template_check in
 * src/server/uidl_migrate.c). The file is written by another program, in the
 * user's Maildir; its UIDLs go on the wire and into clients' state files.
 * Whatever it holds, the parsers must not crash or leak, every UIDL a lookup
 * gives must be 1..70 characters of 0x21..0x7E, and parsing is a function
 * of the input (the same list twice).
 * Input: the file. When it starts with "T:", its first line (after "T:") is
 * a pop3_uidl_format, used when uidl_dovecot_template_check accepts it
 * (so the template parser is fuzzed too); otherwise the first input byte
 * picks one of a few templates. Every name in the input (the text after
 * each ':' and after each line's first space) is looked up. */
#include <string.h>

#include "fuzz_common.h"
#include "server/uidl_migrate.h"

static const char *const templates[] = {
	UIDL_DOVECOT_DEFAULT_TEMPLATE, "%g", "%v.%u", "%f", "%{uid}-%4Lf", "%08Xg",
};

static void
check_uidl(const char *uidl)
{
	size_t len = strlen(uidl);
	FUZZ_CHECK(len >= 1 && len <= 70, "UIDL length %zu", len);
	for (size_t i = 0; i < len; i++)
		FUZZ_CHECK(uidl[i] >= 0x21 && uidl[i] <= 0x7e, "byte 0x%02x in UIDL",
		    (unsigned char)uidl[i]);
}

/* Look up every candidate name in input (copied: the parser changed its own). */
static void
lookups(const struct uidl_old_list *l, const char *input, size_t size)
{
	for (size_t i = 0; i < size; i++) {
		if (input[i] != ':' && input[i] != ' ')
			continue;
		const char *name = input + i + 1;
		size_t len = 0;
		while (name + len < input + size && name[len] != '\n' && name[len] != ':' &&
		    name[len] != ' ')
			len++;
		enum uidl_old_miss miss;
		char *uidl = uidl_old_lookup(l, name, len, &miss);
		FUZZ_CHECK((uidl != NULL) == (miss == UIDL_OLD_FOUND), "miss %d with UIDL", miss);
		if (uidl != NULL)
			check_uidl(uidl);
		free(uidl);
	}
}

static struct uidl_old_list *
parse(int courier, const char *input, size_t size, const char *template)
{
	char *text = malloc(size + 1), *error = NULL;
	if (text == NULL)
		abort();
	memcpy(text, input, size);
	text[size] = '\0';
	struct uidl_old_list *l = courier ? uidl_courier_parse(text, size, &error) :
	    uidl_dovecot_parse(text, size, template, &error);
	FUZZ_CHECK((l == NULL) == (error != NULL), "result and error disagree");
	free(error);
	return l;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *input = (const char *)data;
	const char *template = templates[size > 0 ? data[0] % (sizeof(templates) /
	    sizeof(templates[0])) : 0];
	char *own = NULL;

	if (size > 2 && memcmp(data, "T:", 2) == 0) {
		const char *nl = memchr(data, '\n', size);
		size_t tlen = nl != NULL ? (size_t)(nl - input) - 2 : size - 2;
		char *error = NULL;
		own = fuzz_strndup(data + 2, tlen);
		if (memchr(own, '\0', tlen) == NULL) {   /* a config value has no NUL */
			bool ok = uidl_dovecot_template_check(own, &error);
			FUZZ_CHECK(ok == (error == NULL), "template check and error disagree");
			free(error);
			if (ok)
				template = own;
		}
		if (nl != NULL) {
			size -= (size_t)(nl - input) + 1;
			input = nl + 1;
		} else {
			size = 0;
		}
	}
	for (int courier = 0; courier < 2; courier++) {
		struct uidl_old_list *l = parse(courier, input, size, template);
		struct uidl_old_list *again = parse(courier, input, size, template);
		FUZZ_CHECK((l == NULL) == (again == NULL) &&
		    uidl_old_count(l) == uidl_old_count(again), "parse not deterministic");
		if (l != NULL)
			lookups(l, input, size);
		uidl_old_free(l);
		uidl_old_free(again);
	}
	free(own);
	return 0;
}
