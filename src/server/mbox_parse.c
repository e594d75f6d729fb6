/* mbox parser (contract in mbox_parse.h).
 *
 * Lines are found with memchr; only the first MBOX_HEAD_MAX bytes of a line
 * are looked at one by one (From_ line, quoting, header name), so a line of
 * any length costs no memory and a big mbox parses at memchr speed. */
#include "server/mbox_parse.h"
#include "common/log.h"
#include "common/util.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Enough of a line to know whether it is "From ", or one of the header
 * names below with its colon (the longest, "X-Mozilla-Status2:", is 18). */
#define MBOX_HEAD_MAX 20
/* First allocation of the message array; it doubles up to max_messages. */
#define MBOX_INITIAL_MESSAGES 64

/* Headers that mail readers rewrite in place to keep flags (mutt, alpine,
 * pine, Thunderbird, Dovecot, UW imapd): not part of a message's identity. */
static const char *const mbox_mutable_headers[] = {
	"Status:", "X-Status:", "X-Keywords:", "X-UID:", "X-IMAP:", "X-IMAPbase:",
	"Content-Length:", "Lines:", "X-Mozilla-Status:", "X-Mozilla-Status2:",
	"X-Mozilla-Keys:",
};

enum mbox_lead {
	LEAD_START,   /* nothing of the line seen yet */
	LEAD_GT,      /* only '>' so far */
	LEAD_FROM,    /* '>'s, then lead_match letters of "From " */
	LEAD_DONE,    /* decided: quoted is final */
};

struct mbox_parser {
	enum wire_from_quoting quoting;
	uint32_t max_messages;
	const char *error;
	uint64_t offset;            /* file offset of the next byte fed */
	bool finished;

	/* the current line */
	uint64_t line_start;
	uint64_t line_len;          /* bytes so far, LF excluded */
	bool last_cr;               /* its last byte so far is CR */
	char head[MBOX_HEAD_MAX];
	size_t head_len;
	bool decided;               /* head looked at: the line's kind is known */
	bool line_hashed;           /* its bytes go into the digest */
	bool is_from_line;
	enum mbox_lead lead;
	unsigned lead_match;
	bool quoted;

	/* the line before */
	bool prev_empty;            /* an LF-terminated empty line */
	/* An empty line not counted yet: the separator before a From_ line,
	 * or text if another line follows. */
	bool pending_empty;
	uint64_t pending_start;
	unsigned pending_len;       /* 1 (LF) or 2 (CRLF) */

	/* the current message */
	bool in_message;
	bool in_headers;
	bool skipping_header;
	struct mbox_message cur;
	EVP_MD_CTX *md;
	EVP_MD_CTX *p3md;           /* popa3d's UIDL (mbox_parse.h) */
	EVP_MD *sha256, *md5;       /* fetched once, not at each message */
	/* The identity's bytes come a line's part at a time (head, rest,
	 * LF): gathered here and hashed a few KiB at a time, since each
	 * EVP_DigestUpdate costs more than a line's copy. */
	unsigned char stage[4096];
	size_t staged;
	bool p3_line;               /* the current header field goes into it */
	bool p3_done;               /* the first Received: was hashed */

	struct mbox_message *messages;
	uint32_t count, alloc;
};

struct mbox_parser *
mbox_parser_new(enum wire_from_quoting quoting, uint32_t max_messages)
{
	struct mbox_parser *p = xcalloc(1, sizeof(*p));
	p->quoting = quoting;
	p->max_messages = max_messages;
	p->md = EVP_MD_CTX_new();
	p->p3md = EVP_MD_CTX_new();
	p->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	p->md5 = EVP_MD_fetch(NULL, "MD5", NULL);
	if (p->md == NULL || p->p3md == NULL || p->sha256 == NULL || p->md5 == NULL)
		fatalx("EVP_MD_CTX_new or EVP_MD_fetch failed");
	return p;
}

void
mbox_parser_free(struct mbox_parser *p)
{
	if (p == NULL)
		return;
	EVP_MD_CTX_free(p->md);
	EVP_MD_CTX_free(p->p3md);
	EVP_MD_free(p->sha256);
	EVP_MD_free(p->md5);
	free(p->messages);
	free(p);
}

const char *
mbox_parser_error(const struct mbox_parser *p)
{
	return p->error != NULL ? p->error : "no error";
}

const struct mbox_message *
mbox_parser_messages(const struct mbox_parser *p, uint32_t *count_r)
{
	*count_r = p->count;
	return p->messages;
}

struct mbox_message *
mbox_parser_take(struct mbox_parser *p, uint32_t *count_r)
{
	struct mbox_message *m = p->messages;
	*count_r = p->count;
	p->messages = NULL;
	p->count = p->alloc = 0;
	return m;
}

/* Every byte of the current line goes through here (also those of flag
 * headers, which the identity skips): popa3d's hash takes its own. */
static void
mbox_hash_p3(struct mbox_parser *p, const void *data, size_t len)
{
	if (p->p3_line && len > 0 && EVP_DigestUpdate(p->p3md, data, len) != 1)
		fatalx("MD5 update failed");
}

static void
mbox_hash_flush(struct mbox_parser *p)
{
	if (p->staged > 0 && EVP_DigestUpdate(p->md, p->stage, p->staged) != 1)
		fatalx("SHA-256 update failed");
	p->staged = 0;
}

static void
mbox_hash(struct mbox_parser *p, const void *data, size_t len)
{
	if (len <= sizeof(p->stage) - p->staged) {
		memcpy(p->stage + p->staged, data, len);
		p->staged += len;
		return;
	}
	mbox_hash_flush(p);
	if (len < sizeof(p->stage)) {
		memcpy(p->stage, data, len);
		p->staged = len;
	} else if (EVP_DigestUpdate(p->md, data, len) != 1) {
		fatalx("SHA-256 update failed");
	}
}

/* The message that ends where the next From_ line (or the file) starts. */
static bool
mbox_message_end(struct mbox_parser *p, uint64_t end)
{
	unsigned int mdlen = 0;

	if (!p->in_message)
		return true;
	p->cur.end_offset = end;
	p->cur.data_length = (p->pending_empty ? p->pending_start : end) - p->cur.data_offset;
	if (p->cur.data_offset > end)   /* a From_ line without LF at EOF */
		p->cur.data_length = 0;
	mbox_hash_flush(p);
	if (EVP_DigestFinal_ex(p->md, p->cur.digest, &mdlen) != 1 || mdlen != MBOX_DIGEST_LEN)
		fatalx("SHA-256 final failed");
	unsigned char p3[EVP_MAX_MD_SIZE];
	if (EVP_DigestFinal_ex(p->p3md, p3, &mdlen) != 1 || mdlen != 16)
		fatalx("MD5 final failed");
	snprintf(p->cur.popa3d_uidl, sizeof(p->cur.popa3d_uidl), "%08x%08x",
	    (unsigned)p3[0] | (unsigned)p3[1] << 8 | (unsigned)p3[2] << 16 | (unsigned)p3[3] << 24,
	    (unsigned)p3[4] | (unsigned)p3[5] << 8 | (unsigned)p3[6] << 16 | (unsigned)p3[7] << 24);
	if (p->count == p->alloc) {
		if (p->count >= p->max_messages) {
			p->error = "too many messages";
			return false;
		}
		uint32_t n = p->alloc == 0 ? MBOX_INITIAL_MESSAGES : p->alloc * 2;
		if (n > p->max_messages)
			n = p->max_messages;
		p->messages = xrealloc(p->messages, (size_t)n * sizeof(*p->messages));
		p->alloc = n;
	}
	p->messages[p->count++] = p->cur;
	p->in_message = false;
	p->pending_empty = false;
	return true;
}

static bool
mbox_is_mutable_header(const char *head, size_t len)
{
	/* every name starts with one of these: most header lines stop here */
	switch (len > 0 ? head[0] | 0x20 : 0) {
	case 's': case 'x': case 'c': case 'l':
		break;
	default:
		return false;
	}
	for (size_t i = 0; i < N_ELEMENTS(mbox_mutable_headers); i++) {
		size_t n = strlen(mbox_mutable_headers[i]);
		if (len >= n && strncasecmp(head, mbox_mutable_headers[i], n) == 0)
			return true;
	}
	return false;
}

/* One more byte of the line's start: is it a quoted From_ line? The same
 * rule as the wire encoder's (common/wire.c), which serves it. */
static void
mbox_lead_step(struct mbox_parser *p, char c)
{
	static const char from[] = "From ";

	switch (p->lead) {
	case LEAD_START:
		p->lead = c == '>' && p->quoting != WIRE_FROM_NONE ? LEAD_GT : LEAD_DONE;
		break;
	case LEAD_GT:
		if (c == '>' && p->quoting == WIRE_FROM_MBOXRD)
			break;
		if (c == 'F') {
			p->lead = LEAD_FROM;
			p->lead_match = 1;
		} else {
			p->lead = LEAD_DONE;
		}
		break;
	case LEAD_FROM:
		if (c != from[p->lead_match]) {
			p->lead = LEAD_DONE;
		} else if (++p->lead_match == 5) {
			p->quoted = true;
			p->lead = LEAD_DONE;
		}
		break;
	case LEAD_DONE:
		break;
	}
}

/* The line's head is known (full, or the line ended): what kind of line
 * is it? at_lf: the line ended (head is all of it). */
static bool
mbox_line_decide(struct mbox_parser *p, bool at_lf)
{
	bool from = p->head_len >= 5 && memcmp(p->head, "From ", 5) == 0;
	bool empty = at_lf && (p->head_len == 0 || (p->head_len == 1 && p->head[0] == '\r'));

	p->decided = true;
	if (from && (p->line_start == 0 || p->prev_empty)) {
		if (!mbox_message_end(p, p->line_start))
			return false;
		memset(&p->cur, 0, sizeof(p->cur));
		p->cur.from_offset = p->line_start;
		p->in_message = true;
		p->in_headers = true;
		p->skipping_header = false;
		p->is_from_line = true;
		p->line_hashed = true;
		p->staged = 0;
		if (EVP_DigestInit_ex2(p->md, p->sha256, NULL) != 1 ||
		    EVP_DigestInit_ex2(p->p3md, p->md5, NULL) != 1)
			fatalx("digest init failed");
		p->p3_line = false;
		p->p3_done = false;
		mbox_hash(p, p->head, p->head_len);
		return true;
	}
	if (!p->in_message) {
		p->error = "not an mbox file: it does not start with a \"From \" line";
		return false;
	}
	if (p->pending_empty) {
		/* The empty line before this one was message text. Its line
		 * end is not part of the identity: mutt rewrites the empty
		 * line after the headers as LF when it syncs flags into a CRLF
		 * message, and LF or CRLF, the line is served the same. */
		p->cur.size += 2;
		mbox_hash(p, "\n", 1);
		p->pending_empty = false;
	}
	if (empty) {
		/* Counted (or dropped) when the next line shows what it is. */
		p->p3_line = false;
		p->line_hashed = false;
		p->in_headers = false;
		p->skipping_header = false;
		return true;
	}
	if (p->in_headers) {
		bool continuation = p->head_len > 0 && (p->head[0] == ' ' || p->head[0] == '\t');
		if (!continuation) {
			p->skipping_header = mbox_is_mutable_header(p->head, p->head_len);
			if (!p->p3_done) {
				bool received = p->head_len >= 9 &&
				    strncasecmp(p->head, "Received:", 9) == 0;
				p->p3_line = received ||
				    (p->head_len >= 5 && strncasecmp(p->head, "Date:", 5) == 0) ||
				    (p->head_len >= 11 && strncasecmp(p->head, "Message-ID:", 11) == 0);
				p->p3_done = received;
			} else {
				p->p3_line = false;
			}
		}
		mbox_hash_p3(p, p->head, p->head_len);
		p->line_hashed = !p->skipping_header;
	} else {
		p->p3_line = false;
		p->line_hashed = true;
	}
	if (p->line_hashed)
		mbox_hash(p, p->head, p->head_len);
	return true;
}

static void
mbox_line_reset(struct mbox_parser *p, uint64_t start)
{
	p->line_start = start;
	p->line_len = 0;
	p->last_cr = false;
	p->head_len = 0;
	p->decided = false;
	p->line_hashed = false;
	p->is_from_line = false;
	p->lead = LEAD_START;
	p->lead_match = 0;
	p->quoted = false;
}

/* The LF of the current line (at file offset lf_offset) was seen. */
static bool
mbox_line_end(struct mbox_parser *p, uint64_t lf_offset)
{
	if (!p->decided && !mbox_line_decide(p, true))
		return false;
	uint64_t content = p->line_len - (p->last_cr ? 1 : 0);
	bool empty = content == 0;
	if (p->line_hashed)
		mbox_hash(p, "\n", 1);
	mbox_hash_p3(p, "\n", 1);
	if (p->is_from_line) {
		p->cur.data_offset = lf_offset + 1;
	} else if (empty) {
		p->pending_empty = true;
		p->pending_start = p->line_start;
		p->pending_len = p->last_cr ? 2 : 1;
	} else {
		p->cur.size += content + 2 - (p->quoted ? 1 : 0);
	}
	p->prev_empty = empty && !p->is_from_line;
	mbox_line_reset(p, lf_offset + 1);
	return true;
}

bool
mbox_parser_feed(struct mbox_parser *p, const char *data, size_t len)
{
	size_t pos = 0;

	if (p->error != NULL)
		return false;
	while (pos < len) {
		if (!p->decided || p->lead != LEAD_DONE) {
			/* The start of a line, byte by byte. */
			char c = data[pos];
			if (c == '\n') {
				if (!mbox_line_end(p, p->offset + pos))
					return false;
				pos++;
				continue;
			}
			if (p->lead != LEAD_DONE)
				mbox_lead_step(p, c);
			if (!p->decided) {
				p->head[p->head_len++] = c;
				if (p->head_len == MBOX_HEAD_MAX && !mbox_line_decide(p, false))
					return false;
			} else {
				if (p->line_hashed)
					mbox_hash(p, &c, 1);
				mbox_hash_p3(p, &c, 1);
			}
			p->line_len++;
			p->last_cr = c == '\r';
			pos++;
			continue;
		}
		const char *start = data + pos;
		const char *lf = memchr(start, '\n', len - pos);
		size_t n = lf != NULL ? (size_t)(lf - start) : len - pos;
		if (n > 0) {
			if (p->line_hashed)
				mbox_hash(p, start, n);
			mbox_hash_p3(p, start, n);
			p->line_len += n;
			p->last_cr = start[n - 1] == '\r';
		}
		pos += n;
		if (lf != NULL) {
			if (!mbox_line_end(p, p->offset + pos))
				return false;
			pos++;
		}
	}
	p->offset += len;
	return true;
}

bool
mbox_parser_finish(struct mbox_parser *p)
{
	if (p->error != NULL)
		return false;
	if (p->finished)
		return true;
	p->finished = true;
	if (p->line_len > 0) {
		/* A last line without LF: a line of the message (wire.h: a CR
		 * at its very end is its line end). */
		if (!p->decided && !mbox_line_decide(p, false))
			return false;
		if (!p->is_from_line) {
			uint64_t content = p->line_len - (p->last_cr ? 1 : 0);
			p->cur.size += content + 2 - (p->quoted ? 1 : 0);
		} else {
			p->cur.data_offset = p->offset;
		}
	}
	return mbox_message_end(p, p->offset);
}
