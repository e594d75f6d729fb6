/* LMTP protocol text (lmtp_proto.h). */
#include "server/lmtp_proto.h"
#include "common/util.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

static const struct {
	const char *name;
	enum lmtp_verb verb;
} lmtp_verbs[] = {
	{ "LHLO", LMTP_VERB_LHLO }, { "MAIL", LMTP_VERB_MAIL }, { "RCPT", LMTP_VERB_RCPT },
	{ "DATA", LMTP_VERB_DATA }, { "RSET", LMTP_VERB_RSET }, { "NOOP", LMTP_VERB_NOOP },
	{ "QUIT", LMTP_VERB_QUIT }, { "VRFY", LMTP_VERB_VRFY }, { "HELO", LMTP_VERB_HELO },
	{ "EHLO", LMTP_VERB_EHLO },
};

enum lmtp_verb
lmtp_parse_verb(const char *line, const char **args_r)
{
	size_t len = strcspn(line, " ");

	*args_r = line[len] == ' ' ? line + len + 1 : line + len;
	for (size_t i = 0; i < N_ELEMENTS(lmtp_verbs); i++)
		if (len == 4 && strncasecmp(line, lmtp_verbs[i].name, 4) == 0)
			return lmtp_verbs[i].verb;
	return LMTP_VERB_UNKNOWN;
}

/* "<path>" at *s into out (without brackets); *s moves past '>'. */
static enum lmtp_parse_result
lmtp_parse_path(const char **s, char out[LMTP_PATH_MAX + 1])
{
	const char *p = *s, *end;

	if (*p != '<')
		return LMTP_PARSE_SYNTAX;
	p++;
	end = strchr(p, '>');
	if (end == NULL || (size_t)(end - p) > LMTP_PATH_MAX - 2)
		return LMTP_PARSE_SYNTAX;
	for (const char *c = p; c < end; c++) {
		unsigned char u = (unsigned char)*c;
		if (u <= 0x20 || u >= 0x7f || u == '<')
			return LMTP_PARSE_SYNTAX;
	}
	/* a source route: "@relay,@relay:mailbox" */
	if (*p == '@') {
		const char *colon = memchr(p, ':', (size_t)(end - p));
		if (colon == NULL)
			return LMTP_PARSE_SYNTAX;
		p = colon + 1;
	}
	memcpy(out, p, (size_t)(end - p));
	out[end - p] = '\0';
	*s = end + 1;
	return LMTP_PARSE_OK;
}

/* "KEYWORD:" then optional spaces, then the path. */
static enum lmtp_parse_result
lmtp_parse_keyword_path(const char **s, const char *keyword, char out[LMTP_PATH_MAX + 1])
{
	size_t klen = strlen(keyword);

	if (strncasecmp(*s, keyword, klen) != 0)
		return LMTP_PARSE_SYNTAX;
	*s += klen;
	while (**s == ' ')
		(*s)++;
	return lmtp_parse_path(s, out);
}

enum lmtp_parse_result
lmtp_parse_mail(const char *args, struct lmtp_mail_args *out)
{
	const char *s = args;
	enum lmtp_parse_result r;

	memset(out, 0, sizeof(*out));
	if ((r = lmtp_parse_keyword_path(&s, "FROM:", out->sender)) != LMTP_PARSE_OK)
		return r;
	if (*s != '\0' && *s != ' ')
		return LMTP_PARSE_SYNTAX;
	while (*s != '\0') {
		while (*s == ' ')
			s++;
		if (*s == '\0')
			break;
		size_t len = strcspn(s, " ");
		char param[64];
		if (len >= sizeof(param))
			return LMTP_PARSE_BAD_PARAM;
		memcpy(param, s, len);
		param[len] = '\0';
		s += len;
		char *eq = strchr(param, '=');
		if (eq != NULL)
			*eq++ = '\0';
		if (strcasecmp(param, "SIZE") == 0 && eq != NULL) {
			/* RFC 1870: 1 to 20 digits */
			if (out->has_size || !parse_u64(eq, UINT64_MAX, &out->size))
				return LMTP_PARSE_BAD_PARAM;
			out->has_size = true;
		} else if (strcasecmp(param, "BODY") == 0 && eq != NULL) {
			if (strcasecmp(eq, "7BIT") != 0 && strcasecmp(eq, "8BITMIME") != 0)
				return LMTP_PARSE_BAD_PARAM;
		} else {
			return LMTP_PARSE_BAD_PARAM;
		}
	}
	return LMTP_PARSE_OK;
}

enum lmtp_parse_result
lmtp_parse_rcpt(const char *args, char out[LMTP_PATH_MAX + 1])
{
	const char *s = args;
	enum lmtp_parse_result r;

	if ((r = lmtp_parse_keyword_path(&s, "TO:", out)) != LMTP_PARSE_OK)
		return r;
	if (out[0] == '\0')
		return LMTP_PARSE_SYNTAX;
	while (*s == ' ')
		s++;
	return *s == '\0' ? LMTP_PARSE_OK : LMTP_PARSE_BAD_PARAM;
}

/* --- DATA ------------------------------------------------------------------ */

enum {
	DATA_LINE_START = 0,  /* after CRLF, or at the start */
	DATA_MID,             /* inside a line */
	DATA_CR,              /* inside a line, the last octet was CR */
	DATA_DOT,             /* a line that started with '.', the dot dropped */
	DATA_DOT_CR,          /* ".CR" at a line start, CR held back */
	DATA_DONE,
};

void
lmtp_data_decoder_init(struct lmtp_data_decoder *d)
{
	d->state = DATA_LINE_START;
}

size_t
lmtp_data_decode(struct lmtp_data_decoder *d, const char *in, size_t len, char *out,
    size_t *out_len, bool *done)
{
	size_t i = 0, o = 0;

	*done = false;
	while (i < len && d->state != DATA_DONE) {
		char c = in[i++];
		switch (d->state) {
		case DATA_LINE_START:
			if (c == '.') {
				d->state = DATA_DOT;
				continue;
			}
			break;
		case DATA_DOT:
			if (c == '\r') {
				d->state = DATA_DOT_CR;
				continue;
			}
			break;
		case DATA_DOT_CR:
			if (c == '\n') {
				d->state = DATA_DONE;
				continue;
			}
			/* ".CR" then more: the dot goes, the CR is data */
			out[o++] = '\r';
			d->state = DATA_CR;
			break;
		default:
			break;
		}
		out[o++] = c;
		if (c == '\r')
			d->state = DATA_CR;
		else if (c == '\n' && d->state == DATA_CR)
			d->state = DATA_LINE_START;
		else
			d->state = DATA_MID;
	}
	*out_len = o;
	*done = d->state == DATA_DONE;
	return i;
}

/* --- the queue id ------------------------------------------------------------ */

bool
lmtp_queue_id(const char *head, size_t len, char *out, size_t size)
{
	static const char name[] = "Received:";
	const size_t nlen = sizeof(name) - 1;
	size_t pos = 0;

	if (size < 2)
		return false;
	if (len > LMTP_QUEUE_ID_HEAD)
		len = LMTP_QUEUE_ID_HEAD;
	/* find the header at a line start, within the header section */
	for (;;) {
		if (pos >= len || head[pos] == '\n' || head[pos] == '\r')
			return false;   /* the blank line: no Received header */
		if (len - pos >= nlen && strncasecmp(head + pos, name, nlen) == 0)
			break;
		const char *nl = memchr(head + pos, '\n', len - pos);
		if (nl == NULL)
			return false;
		pos = (size_t)(nl - head) + 1;
	}
	/* its text, continuation lines included: ends at a line that does
	 * not start with a blank */
	size_t start = pos + nlen, end = start;
	while (end < len) {
		if (head[end] == '\n' && (end + 1 >= len || (head[end + 1] != ' ' &&
		    head[end + 1] != '\t')))
			break;
		end++;
	}
	for (size_t i = start; i + 4 <= end; i++) {
		bool before = isspace((unsigned char)head[i]);
		if (!before || strncasecmp(head + i + 1, "id", 2) != 0 ||
		    !isspace((unsigned char)head[i + 3]))
			continue;
		size_t w = i + 3;
		while (w < end && isspace((unsigned char)head[w]))
			w++;
		size_t o = 0;
		while (w < end && isalnum((unsigned char)head[w]) && o + 1 < size &&
		    o < LMTP_QUEUE_ID_MAX)
			out[o++] = head[w++];
		if (o == 0)
			return false;
		out[o] = '\0';
		return true;
	}
	return false;
}
