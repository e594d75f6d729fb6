/* The LMTP protocol parser (src/server/lmtp_proto.c): what an MTA sends to
 * popboxd's LMTP listener. The input is read three ways:
 * - as command lines (split at LF, CR dropped): verbs, MAIL and RCPT
 *   arguments. Accepted paths are at most LMTP_PATH_MAX - 2 octets of
 *   printable ASCII without spaces or brackets; RCPT's is never empty;
 *   a SIZE is only reported when given.
 * - as a DATA stream: decoding it whole and one octet at a time gives the
 *   same output and stops at the same place; the output is never longer
 *   than what was consumed; when the terminator was found the output is
 *   empty or ends in CRLF, and dot-stuffing it again and adding ".CRLF"
 *   decodes back to the same output, consuming exactly that.
 * - as a message head: a queue id found is 1..LMTP_QUEUE_ID_MAX letters
 *   and digits. */
#include <ctype.h>
#include <string.h>

#include "fuzz_common.h"
#include "server/lmtp_proto.h"

static void
check_path(const char *p, bool may_be_empty)
{
	size_t n = strlen(p);
	FUZZ_CHECK(n <= LMTP_PATH_MAX - 2, "path of %zu octets", n);
	FUZZ_CHECK(may_be_empty || n > 0, "empty recipient accepted");
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		FUZZ_CHECK(c > 0x20 && c < 0x7f && c != '<' && c != '>', "octet %02x in a path", c);
	}
}

static void
fuzz_commands(const char *text, size_t size)
{
	const char *s = text, *end = text + size;

	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		size_t n = nl != NULL ? (size_t)(nl - s) : (size_t)(end - s);
		char *line = malloc(n + 1);
		memcpy(line, s, n);
		line[n] = '\0';
		if (n > 0 && line[n - 1] == '\r')
			line[n - 1] = '\0';
		s += n + 1;
		const char *args;
		enum lmtp_verb v = lmtp_parse_verb(line, &args);
		FUZZ_CHECK(args >= line && args <= line + strlen(line), "args outside the line");
		struct lmtp_mail_args m;
		char rcpt[LMTP_PATH_MAX + 1];
		if (lmtp_parse_mail(args, &m) == LMTP_PARSE_OK) {
			check_path(m.sender, true);
			FUZZ_CHECK(m.has_size || m.size == 0, "size without SIZE=");
		}
		if (lmtp_parse_rcpt(args, rcpt) == LMTP_PARSE_OK)
			check_path(rcpt, false);
		(void)v;
		free(line);
	}
}

/* Decode in[0..len) in pieces of step octets. */
static char *
decode(const char *in, size_t len, size_t step, size_t *out_len, size_t *used, bool *done)
{
	struct lmtp_data_decoder d;
	char *out = malloc(len + 2), *piece = malloc(step + 1);
	size_t o = 0, i = 0;

	lmtp_data_decoder_init(&d);
	*done = false;
	while (i < len && !*done) {
		size_t n = len - i < step ? len - i : step, got;
		size_t u = lmtp_data_decode(&d, in + i, n, piece, &got, done);
		FUZZ_CHECK(u <= n && (u == n || *done), "consumed %zu of %zu without the end", u, n);
		FUZZ_CHECK(got <= n + 1, "%zu octets out of %zu in", got, n);
		memcpy(out + o, piece, got);
		o += got;
		i += u;
	}
	free(piece);
	*out_len = o;
	*used = i;
	return out;
}

static void
fuzz_data(const char *in, size_t len)
{
	size_t o1, u1, o2, u2;
	bool d1, d2;
	char *a = decode(in, len, len ? len : 1, &o1, &u1, &d1);
	char *b = decode(in, len, 1, &o2, &u2, &d2);

	FUZZ_CHECK(o1 == o2 && u1 == u2 && d1 == d2 && memcmp(a, b, o1) == 0,
	    "decoding depends on how the input is cut");
	FUZZ_CHECK(o1 <= u1, "more out (%zu) than consumed (%zu)", o1, u1);
	if (d1) {
		FUZZ_CHECK(o1 == 0 || (o1 >= 2 && a[o1 - 2] == '\r' && a[o1 - 1] == '\n'),
		    "a message that does not end in CRLF");
		char *st = malloc(2 * o1 + 3);
		size_t n = 0;
		bool start = true;
		for (size_t i = 0; i < o1; i++) {
			if (start && a[i] == '.')
				st[n++] = '.';
			st[n++] = a[i];
			start = a[i] == '\n' && i > 0 && a[i - 1] == '\r';
		}
		memcpy(st + n, ".\r\n", 3);
		n += 3;
		size_t o3, u3;
		bool d3;
		char *c = decode(st, n, n, &o3, &u3, &d3);
		FUZZ_CHECK(d3 && u3 == n && o3 == o1 && memcmp(c, a, o1) == 0,
		    "re-stuffed message does not decode to itself");
		free(c);
		free(st);
	}
	free(a);
	free(b);
}

static void
fuzz_queue_id(const char *in, size_t len)
{
	char id[LMTP_QUEUE_ID_MAX + 1];
	if (!lmtp_queue_id(in, len, id, sizeof(id)))
		return;
	size_t n = strlen(id);
	FUZZ_CHECK(n >= 1 && n <= LMTP_QUEUE_ID_MAX, "queue id of %zu octets", n);
	for (size_t i = 0; i < n; i++)
		FUZZ_CHECK(isalnum((unsigned char)id[i]), "octet %02x in a queue id",
		    (unsigned char)id[i]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_strndup(data, size);

	fuzz_commands(text, size);
	fuzz_data(text, size);
	fuzz_queue_id(text, size);
	free(text);
	return 0;
}
