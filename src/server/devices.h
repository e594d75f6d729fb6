/* Per-device views of one maildrop (docs/DESIGN.md "Every device gets every
 * message"): the device state file of a maildrop, and the decisions made
 * from it (which messages a device sees, which files may go).
 *
 * A login "USER#DEVICE" names a device of USER. Each device has a slot
 * (1..DEVICES_SLOTS-1; slot 0 is the classic login, which never holds a
 * message back); every message the maildrop's devices know of has one
 * entry, keyed by UIDL: a bit per slot for "deleted by this device", a bit
 * per slot for "retrieved by this device" and the time of the last
 * retrieval (EXPIRE).
 *
 * The file (DEVICES_FILE, next to the index, written only under the
 * maildrop lock) is a journal: a header line, then groups of record lines,
 * each group closed by a commit line that gives the group's line count and
 * a checksum of its bytes. A group counts only when its commit line is
 * whole and right, so a write cut short by a crash (SIGKILL, power loss)
 * counts not at all, and the next open cuts it off. Appending costs what
 * the session changed; the file is rewritten (temp + fsync + rename + fsync
 * of the directory) when it has grown to several times what it holds.
 *
 * Damage (a whole group that does not check, or a missing file where the
 * maildrop says there was one) cannot make a message disappear: the groups
 * that check are kept, and for the next device_idle_days no device's
 * deletion removes a file ("recovery"), since a device the lost records
 * named may still be out there. Deleted messages may reappear for a device
 * whose records were lost; the log says so.
 *
 * Not thread-safe: one session (or admin command) holds a struct devices,
 * under the maildrop lock. */
#ifndef POPBOX_DEVICES_H
#define POPBOX_DEVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DEVICES_FILE "popbox.devices"
/* One fixed temp name is safe: writers hold the maildrop lock. */
#define DEVICES_TMP_FILE "popbox.devices.tmp"
/* Made with the first state file and never removed: a state file missing
 * while this exists was lost, and is treated as damaged. */
#define DEVICES_MARK_FILE "popbox.devices.mark"
/* First line of the state file; bump the number when the format changes. */
#define DEVICES_HEADER "popbox-devices 1"
/* design.md §10: device names are 1-32 of A-Z a-z 0-9 . _ - */
#define DEVICE_NAME_MAX 32
/* Slots in the state file: one bit each in a 64-bit mask; slot 0 is the
 * classic (device-less) login. */
#define DEVICES_SLOTS 64
/* max_devices may not be above this: every active device needs a slot,
 * and idle ones keep theirs. */
#define DEVICES_MAX_LIMIT (DEVICES_SLOTS - 1)
/* The state file is read whole: 256 MiB holds the deletions of 63 devices
 * for a million-message maildrop (MAILDIR_MAX_MESSAGES) of usual UIDLs. A
 * larger file is damage. */
#define DEVICES_FILE_MAX ((size_t)256 << 20)
#define DEVICES_CLASSIC_SLOT 0

struct device {
	bool used;
	char name[DEVICE_NAME_MAX + 1];   /* as first given; "" for slot 0 */
	int64_t first_login;              /* seconds since the epoch */
	int64_t last_login;
};

struct devices_entry {
	char *uidl;                       /* NULL: free bucket */
	uint64_t deleted;                 /* bit per slot */
	uint64_t retrieved;               /* bit per slot */
	int64_t last_retrieved;           /* latest retrieval, 0 = none */
	bool seen;                        /* devices_compact: in the maildrop */
};

struct devices {
	int fd;                           /* the state file, -1 = none yet */
	int dir_fd;                       /* the maildrop's directory, not owned */
	struct device dev[DEVICES_SLOTS];
	struct devices_entry *table;      /* open addressing, linear probing */
	size_t table_cap, table_count;
	int64_t recovery_since;           /* 0 = none; see the top of the file */
	uint64_t file_size;               /* bytes of whole groups */
	uint64_t records;                 /* record lines in the file */
	uint64_t live;                    /* records a rewrite would write */
	/* the group being built (devices_note_*), written by devices_commit */
	char *pending;
	size_t pending_len, pending_cap;
	unsigned pending_lines;
	/* for the log: what the open found */
	uint64_t discarded_bytes;         /* an incomplete last write, cut off */
	uint64_t damaged_bytes;           /* groups that did not check */
};

/* EXPIRE (RFC 2449 §6.7) in days: "never" (-1) or 0..DEVICES_EXPIRE_MAX. */
#define DEVICES_EXPIRE_NEVER (-1)
#define DEVICES_EXPIRE_MAX 3650
bool devices_parse_expire(const char *s, int *days_r);
/* LOGIN-DELAY (RFC 2449 §6.5) in seconds: a number, or with s, m or h;
 * 0..DEVICES_LOGIN_DELAY_MAX (a day). */
#define DEVICES_LOGIN_DELAY_MAX 86400
bool devices_parse_login_delay(const char *s, unsigned *seconds_r);

/* Whether name is a valid device name (1-32 of A-Z a-z 0-9 . _ -). */
bool device_name_valid(const char *name);

/* Split a login name at the last sep: returns the device part (after sep)
 * and sets *user_len to the length of the user part; NULL when name has no
 * sep (a classic login). sep '\0': never split. */
const char *device_split(const char *name, char sep, size_t *user_len);

/* Open the state of the maildrop whose directory is dir_fd. Without a file:
 * *devices_r is a fresh state (no file yet) when create, else NULL (the
 * maildrop has no devices: nothing to do). now: for recovery. Returns 0, or
 * -1 with *error_r (malloc'd) when it cannot be read or repaired (then no
 * login may use it: that would lose deletions or hold-backs). Damage is
 * logged (name for the log: the maildrop's path). */
int devices_open(int dir_fd, const char *name, bool create, int64_t now,
    struct devices **devices_r, char **error_r);
void devices_free(struct devices *d);

/* Parse a state file's text into d (fresh from devices_new), for
 * devices_open and the fuzz target: returns the length of the part that
 * holds whole, valid groups; *damaged_r: a group that did not check was
 * skipped (more than an incomplete last write). */
struct devices *devices_new(void);
size_t devices_parse(struct devices *d, const char *text, size_t len, bool *damaged_r);

/* The slot of device name (case-insensitive), -1 if unknown. */
int devices_find(const struct devices *d, const char *name);
/* Whether slot is a device that holds messages back at now (logged in
 * within idle_seconds). Slot 0 never does. */
bool devices_active(const struct devices *d, int slot, int64_t now, int64_t idle_seconds);
unsigned devices_active_count(const struct devices *d, int64_t now, int64_t idle_seconds);
/* Register a new device (first login at now): its slot, or -1 when every
 * slot is taken (by active or idle devices). */
int devices_add(struct devices *d, const char *name, int64_t now);

/* Records for the next commit. */
void devices_note_login(struct devices *d, int slot, int64_t now);
void devices_note_delete(struct devices *d, int slot, const char *uidl);
void devices_note_retrieve(struct devices *d, int slot, const char *uidl, int64_t now);
/* Forget slot: its deletions and retrievals go, the slot is free. */
void devices_note_forget(struct devices *d, int slot);

/* Append the pending records as one group; with sync the group is durable
 * (fdatasync; the directory too when the file was made) when it returns 0.
 * Creates the file (and DEVICES_MARK_FILE) if needed. -1 with *error_r. */
int devices_commit(struct devices *d, bool sync, char **error_r);
/* Whether there are records not yet committed. */
bool devices_pending(const struct devices *d);

/* The entry of uidl, NULL if none. */
const struct devices_entry *devices_lookup(const struct devices *d, const char *uidl);
/* Whether slot has deleted uidl. */
bool devices_deleted(const struct devices *d, int slot, const char *uidl);
/* Whether uidl's file may go: every device active at now has deleted it
 * (and no recovery window is open). False when no device is active. */
bool devices_all_deleted(const struct devices *d, const char *uidl, int64_t now,
    int64_t idle_seconds);
/* Whether uidl expired at now with expire_seconds: every active device
 * retrieved or deleted it (a user without active devices: anyone
 * retrieved it), and the last retrieval is expire_seconds old. */
bool devices_expired(const struct devices *d, const char *uidl, int64_t now,
    int64_t idle_seconds, int64_t expire_seconds);

/* Forget uidl's entry (its file is gone). */
void devices_drop(struct devices *d, const char *uidl);
/* Whether the file has grown to several times what it holds. */
bool devices_compact_due(const struct devices *d);
/* Rewrite the file durably (temp, fsync, rename, fsync of the directory)
 * with only the entries of the messages in the maildrop (messages[0..count),
 * a snapshot taken under the same lock; NULL: keep every entry). Returns 0 or -1 with *error_r; on
 * failure the old file stays and is still right. */
struct store_message;
int devices_compact(struct devices *d, const struct store_message *messages, uint32_t count,
    char **error_r);

/* The clock of device and expiry decisions: time(), moved by
 * POPBOX_TEST_CLOCK_OFFSET seconds when that is set in the environment
 * (tests move time with it; docs/DESIGN.md). */
int64_t devices_now(void);

#endif
