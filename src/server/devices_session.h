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
};

struct devices_login {
	/* in */
	char *device;            /* a valid device name; NULL: a classic login */
	unsigned idle_days;
	unsigned max_devices;
	/* out */
	struct devices *state;   /* NULL: a classic login (nothing to keep) */
	int slot;
	uint32_t *view;          /* the store indexes the device sees, in order;
	                          * NULL: every message */
	uint32_t view_count;
	uint64_t view_size;      /* their total wire size */
	enum devices_refusal refusal;
};

/* After the store opened (with state_dir_fd): load the state, register the
 * device (or refuse it: l->refusal, STORE_OK), note the login, build the
 * view. STORE_TEMP with *error_r when the state cannot be read or written:
 * a login without it could show deleted mail or lose hold-backs. */
enum store_status devices_login_run(struct devices_login *l, struct store *store, char **error_r);
/* Free the outputs and inputs (not l itself). */
void devices_login_clear(struct devices_login *l);

/* UPDATE of a device's session: deleted[] by store index. Records the
 * deletions durably first, then removes the files every active device has
 * deleted (store expunge), then rewrites the state file if it is due.
 * *removed_r: files removed. STORE_TEMP with *error_r when the deletions
 * could not be made durable (then nothing was removed) or a removal failed. */
enum store_status devices_update_run(struct devices *state, int slot, unsigned idle_days,
    struct store *store, const bool *deleted, uint32_t *removed_r, char **error_r);

#endif
