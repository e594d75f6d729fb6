/* What a device's login and its UPDATE do with the maildrop's device state
 * (devices.h), on the store thread, under the maildrop lock
 * (docs/DESIGN.md "Every device gets every message"). */
#ifndef POPBOX_DEVICES_SESSION_H
#define POPBOX_DEVICES_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "server/devices.h"
#include "server/store.h"

enum devices_refusal {
	DEVICES_ACCEPTED = 0,
	DEVICES_TOO_MANY,        /* a new device over max_devices */
	DEVICES_DELAY,           /* LOGIN-DELAY: too soon after the last login */
};

struct devices_login {
	/* in */
	char *device;            /* a valid device name; NULL: a classic login */
	unsigned idle_days;
	unsigned max_devices;
	int expire_days;         /* the user's EXPIRE, DEVICES_EXPIRE_NEVER = none */
	unsigned login_delay;    /* the user's LOGIN-DELAY in seconds, 0 = none */
	/* out */
	struct devices *state;   /* NULL: a classic login without EXPIRE or
	                          * LOGIN-DELAY (nothing to keep) */
	int slot;                /* DEVICES_CLASSIC_SLOT for a classic login */
	uint32_t expired;        /* files removed by EXPIRE at this login */
	uint32_t *view;          /* the store indexes the device sees, in order;
	                          * NULL: every message */
	uint32_t view_count;
	uint64_t view_size;      /* their total wire size */
	enum devices_refusal refusal;
};

/* After the store opened (with state_dir_fd): load the state, refuse a
 * login within the LOGIN-DELAY (l->refusal, STORE_OK, nothing written),
 * register the device (or refuse it), note the login, remove what EXPIRE
 * says has expired (before the listing), build the view. STORE_TEMP with *error_r when the state cannot be read or written:
 * a login without it could show deleted mail or lose hold-backs. */
enum store_status devices_login_run(struct devices_login *l, struct store *store, char **error_r);
/* Free the outputs and inputs (not l itself). */
void devices_login_clear(struct devices_login *l);

/* UPDATE of a session with device state: deleted[] and retrieved[] (RETR)
 * by store index. A device records its deletions durably first, then the
 * files every active device has deleted are removed (store expunge); a
 * classic session removes what it deleted. With EXPIRE the retrievals are
 * recorded, and EXPIRE 0 deletes what was retrieved. Then the state file is
 * rewritten if it is due. *removed_r: files removed. STORE_TEMP with
 * *error_r when the deletions could not be made durable (then nothing was
 * removed) or a removal failed. */
enum store_status devices_update_run(struct devices *state, int slot, unsigned idle_days,
    int expire_days, struct store *store, const bool *deleted, const bool *retrieved,
    uint32_t *removed_r, char **error_r);

/* The admin command's sweep (popbox expire, popbox devices --forget): with
 * the maildrop locked and its state loaded, remove every file that every
 * active device has deleted (held back before by a device that became idle
 * or was forgotten) and, unless expire_days is DEVICES_EXPIRE_NEVER, what
 * has expired; then rewrite the state file. Counts in *held_r and
 * *expired_r. STORE_OK, or a status with *error_r. */
enum store_status devices_sweep(struct devices *state, struct store *store, unsigned idle_days,
    int expire_days, uint32_t *held_r, uint32_t *expired_r, char **error_r);

#endif
