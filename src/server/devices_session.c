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
devices_build_view(struct devices_login *l, struct store *store, const bool *gone)
{
	struct devices *d = l->state;
	uint32_t n = 0;
	if (d->table_count == 0 && gone == NULL)
		return;
	uint32_t *view = xmalloc((store->count ? store->count : 1) * sizeof(*view));
	uint64_t size = 0;
	for (uint32_t i = 0; i < store->count; i++) {
		if ((gone != NULL && gone[i]) || devices_deleted(d, l->slot, store->messages[i].uidl))
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

/* EXPIRE at login, before the listing: remove what every active device
 * (or, without devices, anyone) retrieved expire_days ago. Returns the
 * removed ones by store index (NULL: none). A failed removal is logged and
 * shows the messages (nothing is hidden that may still be there). */
static bool *
devices_expire_run(struct devices_login *l, struct store *store, int64_t now, int64_t idle,
    char **error_r)
{
	struct devices *d = l->state;
	bool *gone = NULL;
	uint32_t n = 0;
	if (l->expire_days == DEVICES_EXPIRE_NEVER || d->table_count == 0)
		return NULL;
	int64_t after = (int64_t)l->expire_days * DAY_SECONDS;
	for (uint32_t i = 0; i < store->count; i++) {
		if (!devices_expired(d, store->messages[i].uidl, now, idle, after))
			continue;
		if (gone == NULL)
			gone = xcalloc(store->count, sizeof(bool));
		gone[i] = true;
		n++;
	}
	if (n == 0)
		return NULL;
	char *err = NULL;
	if (store->backend->expunge(store, gone, &err) != STORE_OK) {
		log_warnx("%s: EXPIRE: %s", store->path, err ? err : "removal failed");
		free(err);
		free(gone);
		return NULL;
	}
	for (uint32_t i = 0; i < store->count; i++)
		if (gone[i])
			devices_drop(d, store->messages[i].uidl);
	l->expired = n;
	log_info("%s: EXPIRE %d: %u messages removed", store->path, l->expire_days, n);
	(void)error_r;
	return gone;
}

enum store_status
devices_login_run(struct devices_login *l, struct store *store, char **error_r)
{
	int64_t now = devices_now();
	int64_t idle = (int64_t)l->idle_days * DAY_SECONDS;
	l->refusal = DEVICES_ACCEPTED;
	l->slot = DEVICES_CLASSIC_SLOT;
	if (l->device == NULL && l->login_delay == 0 && l->expire_days == DEVICES_EXPIRE_NEVER)
		return STORE_OK;
	if (store->state_dir_fd < 0) {
		*error_r = xasprintf("the store keeps no device state");
		return STORE_PERM;
	}
	if (devices_open(store->state_dir_fd, store->path, true, now, &l->state, error_r) < 0)
		return STORE_TEMP;
	struct devices *d = l->state;
	bool new_device = false;
	if (l->device != NULL)
		l->slot = devices_find(d, l->device);
	/* RFC 2449 §8.1.1: a login too soon is refused after the password,
	 * and changes nothing (not even the time of the last login). A new
	 * device has no last login; the classic logins of a user are one. */
	if (l->login_delay > 0 && l->slot >= 0 && d->dev[l->slot].last_login != 0 &&
	    now < d->dev[l->slot].last_login + (int64_t)l->login_delay) {
		l->refusal = DEVICES_DELAY;
		return STORE_OK;
	}
	if (l->device == NULL) {
		if (l->login_delay > 0)
			devices_note_login(d, l->slot, now);
	} else if (l->slot < 0) {
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
	bool *gone = devices_expire_run(l, store, now, idle, error_r);
	devices_build_view(l, store, gone);
	free(gone);
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
devices_update_run(struct devices *d, int slot, unsigned idle_days, int expire_days,
    struct store *store, const bool *deleted, const bool *retrieved, uint32_t *removed_r,
    char **error_r)
{
	int64_t now = devices_now();
	int64_t idle = (int64_t)idle_days * DAY_SECONDS;
	bool device = slot != DEVICES_CLASSIC_SLOT, any = false;
	*removed_r = 0;
	bool *del = xcalloc(store->count ? store->count : 1, sizeof(bool));
	for (uint32_t i = 0; i < store->count; i++) {
		/* RFC 2449 §6.7: with EXPIRE 0 a retrieved message is deleted. */
		del[i] = deleted[i] || (expire_days == 0 && retrieved != NULL && retrieved[i]);
		any |= del[i];
		if (del[i] && device)
			devices_note_delete(d, slot, store->messages[i].uidl);
		else if (expire_days > 0 && retrieved != NULL && retrieved[i])
			devices_note_retrieve(d, slot, store->messages[i].uidl, now);
	}
	/* The deletions are durable before any file goes: a crash from here
	 * on may leave files that every device deleted (removed at the next
	 * QUIT that touches them, or by popbox expire), never remove one a
	 * device still holds. Retrievals need no sync (a lost one only makes
	 * a message expire later). */
	if (devices_commit(d, device && any, error_r) < 0) {
		free(del);
		return STORE_TEMP;
	}
	bool *unlink = xcalloc(store->count ? store->count : 1, sizeof(bool));
	uint32_t n = 0;
	for (uint32_t i = 0; i < store->count; i++) {
		if (del[i] && (!device || devices_all_deleted(d, store->messages[i].uidl, now, idle))) {
			unlink[i] = true;
			n++;
		}
	}
	free(del);
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

enum store_status
devices_sweep(struct devices *d, struct store *store, unsigned idle_days, int expire_days,
    uint32_t *held_r, uint32_t *expired_r, char **error_r)
{
	int64_t now = devices_now();
	int64_t idle = (int64_t)idle_days * DAY_SECONDS;
	int64_t after = (int64_t)expire_days * DAY_SECONDS;
	bool *gone = xcalloc(store->count ? store->count : 1, sizeof(bool));
	uint32_t n = 0;
	*held_r = *expired_r = 0;
	for (uint32_t i = 0; i < store->count; i++) {
		const char *uidl = store->messages[i].uidl;
		if (devices_all_deleted(d, uidl, now, idle)) {
			gone[i] = true;
			(*held_r)++;
		} else if (expire_days != DEVICES_EXPIRE_NEVER &&
		    devices_expired(d, uidl, now, idle, after)) {
			gone[i] = true;
			(*expired_r)++;
		}
		n += gone[i];
	}
	enum store_status status = STORE_OK;
	if (n > 0)
		status = store->backend->expunge(store, gone, error_r);
	if (status == STORE_OK) {
		for (uint32_t i = 0; i < store->count; i++)
			if (gone[i])
				devices_drop(d, store->messages[i].uidl);
		if (d->fd >= 0 && devices_compact(d, store->messages, store->count, error_r) < 0)
			status = STORE_TEMP;
	} else {
		*held_r = *expired_r = 0;
	}
	free(gone);
	return status;
}
