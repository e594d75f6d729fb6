/* Connections per source address across all workers (max_connections_per_ip).
 *
 * A table in shared memory, made by the master before it forks: one row of
 * counters per worker, columns indexed by a keyed hash of the address. A
 * worker only writes its own row and zeroes it when it starts, so a crashed
 * worker's connections are forgotten with it; the count for an address is the
 * sum of its column. Two addresses that share a column share a limit: with
 * IPLIMIT_COLUMNS columns that is rare, and errs on the side of refusing.
 *
 * One more row, IPLIMIT_MASTER, is the master's: the plain sessions it
 * handed to per-user session processes (which left their worker), so that
 * both limits hold for them too (docs/DESIGN.md "A process per user
 * session", Limits). */
#ifndef POPBOX_IPLIMIT_H
#define POPBOX_IPLIMIT_H

#define IPLIMIT_COLUMNS 16384
/* The slot of the master's row (any function taking a slot). */
#define IPLIMIT_MASTER (~0u)

struct iplimit;

/* n_workers rows and the master's; NULL if shared memory cannot be had
 * (the limit is then not enforced). */
struct iplimit *iplimit_new(unsigned n_workers);
void iplimit_reset_worker(struct iplimit *l, unsigned slot);
unsigned iplimit_count(const struct iplimit *l, const char *addr);
void iplimit_add(struct iplimit *l, unsigned slot, const char *addr, int delta);
/* All connections of all workers (max_connections), kept the same way. */
unsigned iplimit_total(const struct iplimit *l);
void iplimit_total_add(struct iplimit *l, unsigned slot, int delta);
/* Unmap the table in a process that must not touch it (a session process). */
void iplimit_detach(struct iplimit *l);

#endif
