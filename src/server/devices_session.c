/* Device logins and UPDATE (devices_session.h). */
#include "server/devices_session.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

#define DAY_SECONDS ((int64_t)86400)

/* The device idle longest, for a new device when every slot is taken
 * (only idle devices can be: max_devices <= DEVICES_MAX_LIMIT). */
static int
devices_longest_idle(const struct devices *d, int64_t now, int64_t idle)
{
	int best = -1;
	for (int slot = 1; slot < DEVICES_SLOTS; slot++) {
		if (!d->dev[slot].used || devices_active(d, slot, now, idle))
			continue;
		if (best < 0 || d->dev[slot].last_login < d->dev[best].last_login)
			best = slot;
	}
	return best;
}

static void
devices_build_view(struct devices_login *l, struct store *store)
{
	struct devices *d = l->state;
	uint32_t n = 0;
	if (d->table_count == 0)
		return;
	uint32_t *view = xmalloc((store->count ? store->count : 1) * sizeof(*view));
	uint64_t size = 0;
	for (uint32_t i = 0; i < store->count; i++) {
		if (devices_deleted(d, l->slot, store->messages[i].uidl))
			continue;
		view[n++] = i;
		size += store->messages[i].size;
	}
	if (n == store->count) {
		free(view);
		return;
	}
	l->view = view;
	l->view_count = n;
	l->view_size = size;
}

enum store_status
devices_login_run(struct devices_login *l, struct store *store, char **error_r)
{
	int64_t now = devices_now();
	int64_t idle = (int64_t)l->idle_days * DAY_SECONDS;
	l->refusal = DEVICES_ACCEPTED;
	if (l->device == NULL)
		return STORE_OK;
	if (store->state_dir_fd < 0) {
		*error_r = xasprintf("the store keeps no device state");
		return STORE_PERM;
	}
	if (devices_open(store->state_dir_fd, store->path, true, now, &l->state, error_r) < 0)
		return STORE_TEMP;
	struct devices *d = l->state;
	bool new_device = false;
	l->slot = devices_find(d, l->device);
	if (l->slot < 0) {
		if (devices_active_count(d, now, idle) >= l->max_devices) {
			l->refusal = DEVICES_TOO_MANY;
			return STORE_OK;
		}
		l->slot = devices_add(d, l->device, now);
		if (l->slot < 0) {
			/* Every slot is held by a device idle or active; the
			 * active ones are fewer than max_devices, so some are
			 * idle: the one idle longest makes room (it forgets its
			 * deletions, logged). */
			int old = devices_longest_idle(d, now, idle);
			if (old < 0) {
				l->refusal = DEVICES_TOO_MANY;
				return STORE_OK;
			}
			log_info("%s: device %s idle since %lld is forgotten to make room for %s",
			    store->path, d->dev[old].name, (long long)d->dev[old].last_login, l->device);
			devices_note_forget(d, old);
			l->slot = devices_add(d, l->device, now);
		}
		new_device = true;
	} else {
		devices_note_login(d, l->slot, now);
	}
	/* A new device holds messages back from now on: that must survive a
	 * crash before any other device's QUIT can rely on it. A login time
	 * need not (a lost one only makes a device look idle sooner). */
	if (devices_commit(d, new_device, error_r) < 0)
		return STORE_TEMP;
	devices_build_view(l, store);
	return STORE_OK;
}

void
devices_login_clear(struct devices_login *l)
{
	free(l->device);
	l->device = NULL;
	devices_free(l->state);
	l->state = NULL;
	free(l->view);
	l->view = NULL;
}

enum store_status
devices_update_run(struct devices *d, int slot, unsigned idle_days, struct store *store,
    const bool *deleted, uint32_t *removed_r, char **error_r)
{
	int64_t now = devices_now();
	int64_t idle = (int64_t)idle_days * DAY_SECONDS;
	*removed_r = 0;
	for (uint32_t i = 0; i < store->count; i++)
		if (deleted[i])
			devices_note_delete(d, slot, store->messages[i].uidl);
	/* The deletions are durable before any file goes: a crash from here
	 * on may leave files that every device deleted (removed at the next
	 * QUIT that touches them, or by popbox expire), never remove one a
	 * device still holds. */
	if (devices_commit(d, true, error_r) < 0)
		return STORE_TEMP;
	bool *unlink = xcalloc(store->count ? store->count : 1, sizeof(bool));
	uint32_t n = 0;
	for (uint32_t i = 0; i < store->count; i++) {
		if (deleted[i] && devices_all_deleted(d, store->messages[i].uidl, now, idle)) {
			unlink[i] = true;
			n++;
		}
	}
	enum store_status status = STORE_OK;
	if (n > 0) {
		status = store->backend->expunge(store, unlink, error_r);
		if (status == STORE_OK) {
			for (uint32_t i = 0; i < store->count; i++)
				if (unlink[i])
					devices_drop(d, store->messages[i].uidl);
			*removed_r = n;
		}
	}
	free(unlink);
	if (status == STORE_OK && devices_compact_due(d)) {
		char *err = NULL;
		if (devices_compact(d, store->messages, store->count, &err) < 0) {
			log_warnx("%s: rewriting %s: %s", store->path, DEVICES_FILE, err);
			free(err);
		}
	}
	return status;
}
