#include "common/pop3_proto.h"
#include "common/util.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

enum pop3_status
pop3_parse_status(const char *line, const char **text, enum pop3_resp_code *code)
{
	static const struct {
		const char *name;
		enum pop3_resp_code code;
	} codes[] = {
		{ "IN-USE", POP3_CODE_IN_USE },
		{ "LOGIN-DELAY", POP3_CODE_LOGIN_DELAY },
		{ "SYS/TEMP", POP3_CODE_SYS_TEMP },
		{ "SYS/PERM", POP3_CODE_SYS_PERM },
		{ "AUTH", POP3_CODE_AUTH },
	};
	enum pop3_status st;
	const char *p;

	*code = POP3_CODE_NONE;
	if (strncmp(line, "+OK", 3) == 0 && (line[3] == '\0' || line[3] == ' ')) {
		st = POP3_OK;
		p = line + 3;
	} else if (strncmp(line, "-ERR", 4) == 0 && (line[4] == '\0' || line[4] == ' ')) {
		st = POP3_ERR;
		p = line + 4;
	} else if (line[0] == '+' && (line[1] == ' ' || line[1] == '\0')) {
		st = POP3_CONT;
		p = line + 1;
	} else {
		*text = line;
		return POP3_INVALID;
	}
	if (*p == ' ')
		p++;
	*text = p;
	if (st != POP3_CONT && *p == '[') {
		const char *end = strchr(p, ']');
		if (end != NULL) {
			size_t n = (size_t)(end - p - 1);
			*code = POP3_CODE_OTHER;
			for (size_t i = 0; i < N_ELEMENTS(codes); i++) {
				size_t cl = strlen(codes[i].name);
				/* hierarchical codes: "SYS/TEMP/x" still counts */
				if (n >= cl && strncasecmp(p + 1, codes[i].name, cl) == 0 &&
				    (n == cl || p[1 + cl] == '/')) {
					*code = codes[i].code;
					break;
				}
			}
		}
	}
	return st;
}

bool
pop3_code_is_temporary(enum pop3_resp_code code)
{
	return code == POP3_CODE_IN_USE || code == POP3_CODE_LOGIN_DELAY ||
	    code == POP3_CODE_SYS_TEMP;
}

void
pop3_capa_init(struct pop3_capa *capa)
{
	memset(capa, 0, sizeof(*capa));
	capa->login_delay = -1;
}

void
pop3_capa_add_line(struct pop3_capa *capa, const char *line)
{
	char word[32];
	size_t n = strcspn(line, " ");

	if (n == 0 || n >= sizeof(word))
		return;
	for (size_t i = 0; i < n; i++)
		word[i] = (char)toupper((unsigned char)line[i]);
	word[n] = '\0';
	if (strcmp(word, "TOP") == 0)
		capa->top = true;
	else if (strcmp(word, "UIDL") == 0)
		capa->uidl = true;
	else if (strcmp(word, "USER") == 0)
		capa->user = true;
	else if (strcmp(word, "STLS") == 0)
		capa->stls = true;
	else if (strcmp(word, "PIPELINING") == 0)
		capa->pipelining = true;
	else if (strcmp(word, "RESP-CODES") == 0)
		capa->resp_codes = true;
	else if (strcmp(word, "AUTH-RESP-CODE") == 0)
		capa->auth_resp_code = true;
	else if (strcmp(word, "LOGIN-DELAY") == 0 && line[n] == ' ') {
		/* "LOGIN-DELAY 900" or, before login, "LOGIN-DELAY 900 USER" */
		char num[16];
		size_t k = strspn(line + n + 1, "0123456789");
		uint64_t v;
		if (k > 0 && k < sizeof(num)) {
			memcpy(num, line + n + 1, k);
			num[k] = '\0';
			if (parse_u64(num, UINT32_MAX, &v))
				capa->login_delay = v > POP3_MAX_LOGIN_DELAY ? POP3_MAX_LOGIN_DELAY :
				    (long)v;
		}
	}
	else if (strcmp(word, "SASL") == 0) {
		const char *p = line + n;
		size_t o = strlen(capa->sasl);
		for (; *p != '\0' && o + 1 < sizeof(capa->sasl); p++) {
			char c = (char)toupper((unsigned char)*p);
			if (c == ' ' && (o == 0 || capa->sasl[o - 1] == ' '))
				continue;
			if (c != ' ' && !isalnum((unsigned char)c) && c != '-' && c != '_')
				continue;
			capa->sasl[o++] = c;
		}
		if (o > 0 && capa->sasl[o - 1] != ' ' && o + 1 < sizeof(capa->sasl))
			capa->sasl[o++] = ' ';
		capa->sasl[o] = '\0';
	}
}

bool
pop3_capa_has_sasl(const struct pop3_capa *capa, const char *mech)
{
	size_t ml = strlen(mech);
	const char *p = capa->sasl;

	while (*p != '\0') {
		size_t n = strcspn(p, " ");
		if (n == ml && strncasecmp(p, mech, ml) == 0)
			return true;
		p += n;
		while (*p == ' ')
			p++;
	}
	return false;
}

/* Split "a b" (exactly one field each side, separated by spaces) into two
 * NUL-terminated copies of at most size-1 bytes. */
static bool
split_two(const char *s, char *a, size_t asz, char *b, size_t bsz, bool allow_more)
{
	size_t n = strcspn(s, " ");
	if (n == 0 || n >= asz)
		return false;
	memcpy(a, s, n);
	a[n] = '\0';
	s += n;
	if (*s != ' ')
		return false;
	while (*s == ' ')
		s++;
	size_t m = strcspn(s, " ");
	if (m == 0 || m >= bsz)
		return false;
	if (s[m] != '\0' && !allow_more)
		return false;
	memcpy(b, s, m);
	b[m] = '\0';
	return true;
}

bool
pop3_parse_stat(const char *text, uint32_t *count, uint64_t *octets)
{
	char a[16], b[24];
	/* RFC 1939 allows text after the two numbers in +OK of STAT. */
	if (!split_two(text, a, sizeof(a), b, sizeof(b), true))
		return false;
	return parse_u32(a, POP3_MAX_MESSAGES, count) &&
	    parse_u64(b, UINT64_MAX / 4, octets);
}

bool
pop3_parse_list_line(const char *line, uint32_t *msg, uint64_t *size)
{
	char a[16], b[24];
	if (!split_two(line, a, sizeof(a), b, sizeof(b), true))
		return false;
	return parse_u32(a, POP3_MAX_MESSAGES, msg) && *msg >= 1 &&
	    parse_u64(b, UINT64_MAX / 4, size);
}

bool
pop3_uidl_valid(const char *uid)
{
	size_t n = strlen(uid);
	if (n == 0 || n > POP3_MAX_UIDL_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)uid[i] < 0x21 || (unsigned char)uid[i] > 0x7e)
			return false;
	return true;
}

bool
pop3_parse_uidl_line(const char *line, uint32_t *msg, const char **uid)
{
	char a[16];
	size_t n = strcspn(line, " ");
	if (n == 0 || n >= sizeof(a))
		return false;
	memcpy(a, line, n);
	a[n] = '\0';
	if (!parse_u32(a, POP3_MAX_MESSAGES, msg) || *msg < 1)
		return false;
	const char *p = line + n;
	if (*p != ' ')
		return false;
	while (*p == ' ')
		p++;
	/* strip trailing spaces some servers add */
	size_t len = strlen(p);
	while (len > 0 && p[len - 1] == ' ')
		len--;
	if (len == 0 || len > POP3_MAX_UIDL_LEN || len != strlen(p))
		return false;
	if (!pop3_uidl_valid(p))
		return false;
	*uid = p;
	return true;
}

bool
pop3_greeting_timestamp(const char *greeting, char *out, size_t size)
{
	const char *lt = strchr(greeting, '<');
	if (lt == NULL)
		return false;
	const char *gt = strchr(lt, '>');
	if (gt == NULL)
		return false;
	size_t n = (size_t)(gt - lt) + 1;
	if (n >= size || n < 5)
		return false;
	bool at = false;
	for (const char *p = lt + 1; p < gt; p++) {
		if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e || *p == '<')
			return false;
		if (*p == '@')
			at = true;
	}
	if (!at)
		return false;
	memcpy(out, lt, n);
	out[n] = '\0';
	return true;
}

enum { U_BOL, U_DOT, U_DOTCR, U_MID, U_CR };

void
pop3_unstuffer_init(struct pop3_unstuffer *u)
{
	memset(u, 0, sizeof(*u));
	u->state = U_BOL;
}

size_t
pop3_unstuff(struct pop3_unstuffer *u, const char *in, size_t inlen, char *out,
    size_t *consumed)
{
	size_t o = 0, i = 0;

	for (; i < inlen && !u->done; i++) {
		char c = in[i];
		switch (u->state) {
		case U_BOL:
			if (c == '.') {
				u->state = U_DOT;
				continue;
			}
			break;
		case U_DOT:
			if (c == '\r') {
				u->state = U_DOTCR;
				continue;
			}
			if (c == '\n') {	/* bare-LF terminator: lenient */
				u->done = true;
				continue;
			}
			/* the leading dot was stuffing: drop it */
			u->state = U_MID;
			break;
		case U_DOTCR:
			if (c == '\n') {
				u->done = true;
				continue;
			}
			out[o++] = '\r';
			u->state = U_MID;
			break;
		case U_CR:
			if (c == '\n') {
				out[o++] = '\n';
				u->state = U_BOL;
				continue;
			}
			out[o++] = '\r';	/* bare CR is data */
			u->state = U_MID;
			break;
		default:
			break;
		}
		/* U_MID (or a state that fell through to "ordinary byte") */
		if (c == '\r') {
			u->state = U_CR;
		} else if (c == '\n') {
			out[o++] = '\n';
			u->state = U_BOL;
		} else {
			out[o++] = c;
			u->state = U_MID;
		}
	}
	*consumed = i;
	u->in_bytes += i;
	u->out_bytes += o;
	return o;
}
