/* Per-account state: which UIDLs were delivered, and when first.
 *
 * File format (popbox-accounts.conf(5), "STATE FILE"), text, one entry a line:
 *     # popbox state v1
 *     # account NAME server USER@HOST:PORT
 *     <first-delivered unix time> <LIST size in octets> <UIDL>
 * Lines starting with '#' are comments. Written to a temporary file in the
 * same directory, fsynced, renamed over the old one, directory fsynced: a
 * crash leaves the old or the new file, never a mix.
 */
#ifndef POPBOX_UIDL_STATE_H
#define POPBOX_UIDL_STATE_H

#include <stdbool.h>
#include <stdint.h>

#include "client/fetch_error.h"

struct uidl_entry {
	char *uidl;
	uint64_t hash;    /* keyed hash of uidl (the index's, uidl_state.c) */
	int64_t first_seen;
	uint64_t size;
	bool on_server;   /* listed by the server in this session */
};

struct uidl_state {
	char *path;
	char *header;      /* second comment line */
	struct uidl_entry *e;
	size_t count, cap;
	size_t *index;     /* open addressing, linear probing, keyed hash: entry indexes + 1 */
	size_t index_cap;
	bool dirty;
	uint64_t lookups, probes;   /* work done on the index (uidl_state_stats) */
};

/* The work the index has done since st was loaded: lookups (finds, adds)
 * and probes (slots of the index examined, rebuilds included). For tests:
 * with UIDLs chosen by the server, the probes per lookup must stay small
 * whatever the UIDLs are. */
struct uidl_state_stats {
	uint64_t lookups, probes;
};
void uidl_state_stats(const struct uidl_state *st, struct uidl_state_stats *out);

/* Initialise st (whatever it held is overwritten, not freed) and load
 * path into it; path and header are copied. A missing file is an empty
 * state. Every loaded entry starts with on_server false. False with err
 * set (EX_IOERR unreadable, EX_CONFIG a malformed line); st must then
 * still be freed with uidl_state_free(). */
bool uidl_state_load(struct uidl_state *st, const char *path, const char *header,
    struct fetch_error *err);
/* The entry for uidl, or NULL. The pointer (like any entry pointer) is
 * valid until the next add or prune. */
struct uidl_entry *uidl_state_find(struct uidl_state *st, const char *uidl);
/* Add an entry (uidl copied; first_seen when, size, on_server true), or
 * update the size of an existing one; marks st dirty. Returns the entry. */
struct uidl_entry *uidl_state_add(struct uidl_state *st, const char *uidl, int64_t when,
    uint64_t size);
/* Drop every entry not marked on_server (call only after a full UIDL list). */
void uidl_state_prune(struct uidl_state *st);
/* Write st to its path atomically (see above) and clear dirty. False with
 * err set (EX_IOERR); the file on disk is then the old one. */
bool uidl_state_save(struct uidl_state *st, struct fetch_error *err);
/* Free everything st holds (not st itself). */
void uidl_state_free(struct uidl_state *st);

#endif
