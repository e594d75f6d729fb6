#include "client/uidl_state.h"
#include "common/keyed_hash.h"
#include "common/pop3_proto.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A state file line: time, size, UIDL (<= 70) and separators. */
#define UIDL_STATE_MAX_LINE 256

/* The index is keyed (keyed_hash64: SipHash under a key made at random per
 * process; docs/DESIGN.md, "popbox fetch: the tree"). The server chooses
 * every UIDL this table stores and looks up; with an unkeyed hash it could
 * choose UIDLs that share one bucket and make each insert walk all the
 * earlier ones (quadratic in the number of messages). Each entry keeps its
 * hash, so a rebuild does not hash again. */
static uint64_t
hash_uidl(const char *uidl)
{
	return keyed_hash64(uidl, strlen(uidl));
}

/* Rebuild the index for count entries: at most half full. */
static void
reindex(struct uidl_state *st)
{
	free(st->index);
	st->index_cap = 64;
	while (st->index_cap < st->count * 2 + 16)
		st->index_cap *= 2;
	st->index = xcalloc(st->index_cap, sizeof(size_t));
	for (size_t i = 0; i < st->count; i++) {
		size_t h = (size_t)st->e[i].hash & (st->index_cap - 1);
		st->probes++;
		while (st->index[h] != 0) {
			h = (h + 1) & (st->index_cap - 1);
			st->probes++;
		}
		st->index[h] = i + 1;
	}
}

/* The slot of the index that holds uidl (*found true), or the empty slot
 * where it would go. The index must exist (index_cap > 0). */
static size_t
slot_of(struct uidl_state *st, const char *uidl, uint64_t hash, bool *found)
{
	size_t h = (size_t)hash & (st->index_cap - 1);
	st->lookups++;
	for (;;) {
		st->probes++;
		size_t v = st->index[h];
		if (v == 0) {
			*found = false;
			return h;
		}
		const struct uidl_entry *e = &st->e[v - 1];
		if (e->hash == hash && !strcmp(e->uidl, uidl)) {
			*found = true;
			return h;
		}
		h = (h + 1) & (st->index_cap - 1);
	}
}

struct uidl_entry *
uidl_state_find(struct uidl_state *st, const char *uidl)
{
	bool found;
	if (st->index_cap == 0)
		return NULL;
	size_t h = slot_of(st, uidl, hash_uidl(uidl), &found);
	return found ? &st->e[st->index[h] - 1] : NULL;
}

struct uidl_entry *
uidl_state_add(struct uidl_state *st, const char *uidl, int64_t when, uint64_t size)
{
	uint64_t hash = hash_uidl(uidl);
	bool found;

	if (st->index_cap == 0)
		reindex(st);
	size_t h = slot_of(st, uidl, hash, &found);
	st->dirty = true;
	if (found) {
		struct uidl_entry *e = &st->e[st->index[h] - 1];
		e->size = size;
		return e;
	}
	if (st->count == st->cap) {
		st->cap = st->cap ? st->cap * 2 : 64;
		st->e = xrealloc(st->e, st->cap * sizeof(*st->e));
	}
	struct uidl_entry *e = &st->e[st->count++];
	e->uidl = xstrdup(uidl);
	e->hash = hash;
	e->first_seen = when;
	e->size = size;
	e->on_server = true;
	if (st->count * 2 + 16 > st->index_cap)
		reindex(st);
	else
		st->index[h] = st->count;
	return e;
}

bool
uidl_state_load(struct uidl_state *st, const char *path, const char *header,
    struct fetch_error *err)
{
	memset(st, 0, sizeof(*st));
	st->path = xstrdup(path);
	st->header = xstrdup(header);
	reindex(st);
	FILE *f = fopen(path, "re");
	if (f == NULL) {
		if (errno == ENOENT)
			return true;
		return fetch_error_set(err, EX_IOERR, "cannot read state file %s: %s", path,
		    strerror(errno));
	}
	char line[UIDL_STATE_MAX_LINE + 2];
	int lineno = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		size_t n = strcspn(line, "\n");
		if (line[n] != '\n' && !feof(f)) {
			fclose(f);
			return fetch_error_set(err, EX_CONFIG, "state file %s:%d: line too long "
			    "(fix or remove it; --rebuild-state recreates it from a Maildir)",
			    path, lineno);
		}
		line[n] = '\0';
		if (line[0] == '#' || line[0] == '\0')
			continue;
		char t[24], sz[24], uidl[POP3_MAX_UIDL_LEN + 2];
		uint64_t tv, sv;
		if (sscanf(line, "%23s %23s %71s", t, sz, uidl) != 3 ||
		    !parse_u64(t, INT64_MAX, &tv) || !parse_u64(sz, UINT64_MAX / 4, &sv) ||
		    !pop3_uidl_valid(uidl)) {
			fclose(f);
			return fetch_error_set(err, EX_CONFIG, "state file %s:%d: invalid entry "
			    "(fix or remove it; --rebuild-state recreates it from a Maildir)",
			    path, lineno);
		}
		struct uidl_entry *e = uidl_state_add(st, uidl, (int64_t)tv, sv);
		e->on_server = false;
	}
	fclose(f);
	st->dirty = false;
	return true;
}

void
uidl_state_prune(struct uidl_state *st)
{
	size_t o = 0;
	for (size_t i = 0; i < st->count; i++) {
		if (st->e[i].on_server)
			st->e[o++] = st->e[i];
		else {
			free(st->e[i].uidl);
			st->dirty = true;
		}
	}
	st->count = o;
	reindex(st);
}

bool
uidl_state_save(struct uidl_state *st, struct fetch_error *err)
{
	char *tmp = xasprintf("%s.tmp.%ld", st->path, (long)getpid());
	int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		goto fail;
	FILE *f = fdopen(fd, "w");
	if (f == NULL) {
		close(fd);
		goto fail;
	}
	/* saved at every checkpoint of a long fetch: a few big writes, not
	 * one per 4 KiB of entries */
	static char buf[64 * 1024];
	setvbuf(f, buf, _IOFBF, sizeof(buf));
	fprintf(f, "# popbox state v1: <first delivered, unix time> <size> <UIDL>\n# %s\n",
	    st->header);
	for (size_t i = 0; i < st->count; i++)
		fprintf(f, "%" PRId64 " %" PRIu64 " %s\n", st->e[i].first_seen, st->e[i].size,
		    st->e[i].uidl);
	if (fflush(f) != 0 || fsync(fd) != 0) {
		fclose(f);
		goto fail;
	}
	if (fclose(f) != 0)
		goto fail;
	if (rename(tmp, st->path) != 0)
		goto fail;
	free(tmp);
	char *dir = xstrdup(st->path);
	char *slash = strrchr(dir, '/');
	if (slash != NULL) {
		*slash = '\0';
		(void)fsync_dir(dir[0] ? dir : "/");
	}
	free(dir);
	st->dirty = false;
	return true;
fail:
	fetch_error_set(err, EX_IOERR, "cannot write state file %s: %s", st->path,
	    strerror(errno));
	unlink(tmp);
	free(tmp);
	return false;
}

void
uidl_state_stats(const struct uidl_state *st, struct uidl_state_stats *out)
{
	out->lookups = st->lookups;
	out->probes = st->probes;
}

void
uidl_state_free(struct uidl_state *st)
{
	for (size_t i = 0; i < st->count; i++)
		free(st->e[i].uidl);
	free(st->e);
	free(st->index);
	free(st->path);
	free(st->header);
	memset(st, 0, sizeof(*st));
}
