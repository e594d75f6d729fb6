/* Maildir delivery (store_deliver.h; docs/DESIGN.md "Mail in").
 *
 * Durability order: the file's data is fsynced before its name appears in
 * new/, and new/ is fsynced before success is reported, so a crash at any
 * point leaves either no message or the whole message, and success is only
 * claimed for a message that survives one. The file is anonymous
 * (O_TMPFILE) until linkat() names it, so a killed delivery leaves nothing
 * in tmp/ to clean up. */
#include "server/store_deliver.h"
#include "server/store_maildir_int.h"
#include "common/eol.h"
#include "common/log.h"
#include "common/util.h"
#include "common/wire.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

/* Read size for the message stream: large enough that system call cost
 * vanishes, small enough to keep a delivery's memory fixed (three buffers:
 * input, converted, wire-encoded for counting). */
#define DELIVER_CHUNK (64 * 1024)
/* A taken name (clock set back, a second host with the same name sharing
 * the maildrop) is retried with the next counter value this many times. */
#define DELIVER_NAME_TRIES 16
/* Maildir names carry the host name; a longer one is cut (uniqueness comes
 * from time, pid and counter on this host). */
#define DELIVER_HOST_MAX 64
/* New message files: readable by their owner only, like the maildrop. */
#define DELIVER_FILE_MODE 0600

/* Deliveries of one process (LMTP: several store threads) never share a
 * name: the counter is part of it. */
static atomic_uint deliver_counter;

struct maildir_target {
	const char *path;
	int root_fd, tmp_fd, new_fd;
	int link_errno;       /* why the last deliver_link could not link */
};

const char *
delivery_status_name(enum delivery_status status)
{
	switch (status) {
	case DELIVERY_OK:
		return "delivered";
	case DELIVERY_TEMP:
		return "temporary failure";
	case DELIVERY_PERM:
		return "maildrop unusable";
	case DELIVERY_OVER_QUOTA:
		return "over max_maildrop_size";
	case DELIVERY_TOO_BIG:
		return "over max_message_size";
	}
	return "?";
}

static enum delivery_status
deliver_errno_status(int err)
{
	return store_maildir_errno_status(err) == STORE_PERM ? DELIVERY_PERM : DELIVERY_TEMP;
}

static void
deliver_target_close(struct maildir_target *mt)
{
	if (mt->root_fd >= 0)
		close(mt->root_fd);
	if (mt->tmp_fd >= 0)
		close(mt->tmp_fd);
	if (mt->new_fd >= 0)
		close(mt->new_fd);
	mt->root_fd = mt->tmp_fd = mt->new_fd = -1;
}

/* sub/ of the maildrop, made when missing (as a login makes it) and checked
 * like the maildrop. */
static int
deliver_open_subdir(struct maildir_target *mt, const char *sub, char **error_r)
{
	int fd = openat(mt->root_fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT && store_maildir_mkdir(mt->root_fd, sub) == 0)
		fd = openat(mt->root_fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		*error_r = xasprintf("maildir %s: %s/: %s", mt->path, sub, strerror(errno));
		return -1;
	}
	if (!store_maildir_check_owner(fd, mt->path, sub, error_r)) {
		close(fd);
		errno = EPERM;
		return -1;
	}
	return fd;
}

/* Open (or create) the maildrop for a delivery. */
static enum delivery_status
deliver_target_open(const char *path, struct maildir_target *mt, char **error_r)
{
	mt->path = path;
	mt->link_errno = 0;
	mt->tmp_fd = mt->new_fd = -1;
	if (*path == '\0') {
		*error_r = xasprintf("maildir: empty path");
		return DELIVERY_PERM;
	}
	mt->root_fd = store_maildir_open_root(path, error_r);
	if (mt->root_fd < 0)
		return deliver_errno_status(errno);
	if (!store_maildir_check_owner(mt->root_fd, path, "the maildrop", error_r))
		goto perm;
	/* cur/ too: the maildrop must look to a login as it would after one */
	if (store_maildir_mkdir(mt->root_fd, "cur") < 0) {
		*error_r = xasprintf("maildir %s: mkdir cur: %s", path, strerror(errno));
		goto errno_fail;
	}
	if ((mt->tmp_fd = deliver_open_subdir(mt, "tmp", error_r)) < 0 ||
	    (mt->new_fd = deliver_open_subdir(mt, "new", error_r)) < 0)
		goto errno_fail;
	return DELIVERY_OK;
errno_fail: {
	enum delivery_status st = deliver_errno_status(errno);
	deliver_target_close(mt);
	return st;
}
perm:
	deliver_target_close(mt);
	return DELIVERY_PERM;
}

int
store_deliver_tmpfile(int dir_fd)
{
	return openat(dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, DELIVER_FILE_MODE);
}

/* Octets stored in sub/ (regular files not starting with '.'), added to
 * *sum. 0, or -1 with errno. */
static int
deliver_dir_octets(int root_fd, const char *sub, uint64_t *sum)
{
	int fd = openat(root_fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct dirent *d;
	DIR *dir;

	if (fd < 0)
		return -1;
	if ((dir = fdopendir(fd)) == NULL) {
		close(fd);
		return -1;
	}
	while ((errno = 0, d = readdir(dir)) != NULL) {
		struct stat st;
		if (d->d_name[0] == '.')
			continue;
		if (fstatat(dirfd(dir), d->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISREG(st.st_mode))
			*sum += (uint64_t)st.st_size;
	}
	int saved = errno;
	closedir(dir);
	errno = saved;
	return saved != 0 ? -1 : 0;
}

/* Would size more octets pass max_maildrop_size? Costs a stat per message,
 * so only with a limit set (docs/DESIGN.md "Mail in"). */
static enum delivery_status
deliver_check_quota(const struct maildir_target *mt, uint64_t limit, uint64_t size,
    char **error_r)
{
	uint64_t sum = 0;

	if (limit == 0)
		return DELIVERY_OK;
	if (deliver_dir_octets(mt->root_fd, "new", &sum) < 0 ||
	    deliver_dir_octets(mt->root_fd, "cur", &sum) < 0) {
		*error_r = xasprintf("maildir %s: reading its size: %s", mt->path, strerror(errno));
		return DELIVERY_TEMP;
	}
	if (sum + size > limit || size > limit) {
		*error_r = xasprintf("maildir %s: %llu octets stored, %llu more would pass "
		    "max_maildrop_size %llu", mt->path, (unsigned long long)sum,
		    (unsigned long long)size, (unsigned long long)limit);
		return DELIVERY_OVER_QUOTA;
	}
	return DELIVERY_OK;
}

/* The host part of Maildir names: '/' and ':' cannot appear (a path, the
 * info separator), nor anything unprintable. */
static void
deliver_host_name(char *out, size_t size)
{
	static const char allowed[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789-._";
	char host[HOST_NAME_MAX + 1];

	if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
		strcpy(host, "localhost");
	host[sizeof(host) - 1] = '\0';
	size_t o = 0;
	for (size_t i = 0; host[i] != '\0' && o + 1 < size && o < DELIVER_HOST_MAX; i++)
		out[o++] = strchr(allowed, host[i]) != NULL ? host[i] : '_';
	out[o] = '\0';
}

/* Give file_fd (data fsynced) a unique name in new/, then fsync new/. */
static enum delivery_status
deliver_link(struct maildir_target *mt, int file_fd, uint64_t stored, uint64_t wire_size,
    struct delivery_result *result_r, char **error_r)
{
	char proc[64], host[DELIVER_HOST_MAX + 1], name[NAME_MAX + 1];
	struct timeval tv;
	int r = -1;

	deliver_host_name(host, sizeof(host));
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", file_fd);
	for (int tries = 0; tries < DELIVER_NAME_TRIES; tries++) {
		gettimeofday(&tv, NULL);
		snprintf(name, sizeof(name), "%lld.M%06ldP%dQ%u.%s,S=%llu",
		    (long long)tv.tv_sec, (long)tv.tv_usec, (int)getpid(),
		    atomic_fetch_add(&deliver_counter, 1) + 1, host, (unsigned long long)stored);
		r = linkat(AT_FDCWD, proc, mt->new_fd, name, AT_SYMLINK_FOLLOW);
		if (r == 0 || errno != EEXIST)
			break;
	}
	mt->link_errno = r < 0 ? errno : 0;
	if (r < 0) {
		int saved = errno;
		*error_r = xasprintf("maildir %s: link into new/: %s", mt->path, strerror(saved));
		return deliver_errno_status(saved);
	}
	if (fsync(mt->new_fd) < 0) {
		int saved = errno;
		/* Not known to be durable: take it back, the sender retries. */
		unlinkat(mt->new_fd, name, 0);
		*error_r = xasprintf("maildir %s: fsync new/: %s", mt->path, strerror(saved));
		return DELIVERY_TEMP;
	}
	result_r->file = xasprintf("new/%s", name);
	result_r->size = wire_size;
	return DELIVERY_OK;
}

/* write() all of buf, or -1 with errno. */
static int
deliver_write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The stream's state: counts and buffers. */
struct deliver_copy {
	struct eol_converter eol;
	struct wire_encoder wire;
	char *conv, *encoded;
	uint64_t stored;
};

/* Convert and write in[0..len) to fd, counting stored and wire octets. */
static int
deliver_copy_chunk(struct deliver_copy *dc, int fd, const char *in, size_t len, bool last)
{
	size_t n = eol_convert(&dc->eol, in, len, dc->conv);
	if (last)
		n += eol_finish(&dc->eol, dc->conv + n);
	wire_encode(&dc->wire, dc->conv, n, dc->encoded);
	if (last)
		wire_encode_finish(&dc->wire, dc->encoded);
	dc->stored += n;
	return deliver_write_all(fd, dc->conv, n);
}

enum delivery_status
store_maildir_deliver_stream(const struct delivery_target *t, const char *header, int in_fd,
    uint64_t max_message_size, struct delivery_result *result_r, char **error_r)
{
	struct maildir_target mt;
	struct deliver_copy dc;
	enum delivery_status st;
	char *in = NULL;
	int fd = -1;

	result_r->file = NULL;
	result_r->size = 0;
	st = deliver_target_open(t->path, &mt, error_r);
	if (st != DELIVERY_OK)
		return st;
	if ((fd = store_deliver_tmpfile(mt.tmp_fd)) < 0) {
		*error_r = xasprintf("maildir %s: create in tmp/: %s", t->path, strerror(errno));
		st = deliver_errno_status(errno);
		goto out;
	}
	memset(&dc, 0, sizeof(dc));
	eol_converter_init(&dc.eol);
	wire_encoder_init(&dc.wire, -1);
	in = xmalloc(DELIVER_CHUNK);
	dc.conv = xmalloc(DELIVER_CHUNK + 1);
	dc.encoded = xmalloc(WIRE_ENCODE_MAX(DELIVER_CHUNK + 1));
	st = DELIVERY_TEMP;
	/* the header is short and ours (LF ends): one chunk */
	if (header != NULL && strlen(header) <= DELIVER_CHUNK &&
	    deliver_copy_chunk(&dc, fd, header, strlen(header), false) < 0)
		goto write_error;
	for (;;) {
		ssize_t n = read(in_fd, in, DELIVER_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*error_r = xasprintf("reading the message: %s", strerror(errno));
			goto out;
		}
		if (deliver_copy_chunk(&dc, fd, in, (size_t)n, n == 0) < 0)
			goto write_error;
		if (max_message_size != 0 && dc.stored > max_message_size) {
			*error_r = xasprintf("message over max_message_size %llu octets",
			    (unsigned long long)max_message_size);
			st = DELIVERY_TOO_BIG;
			goto out;
		}
		if (n == 0)
			break;
	}
	uint64_t wire_size = dc.wire.emitted - dc.wire.stuffed;
	st = deliver_check_quota(&mt, t->max_maildrop_size, wire_size, error_r);
	if (st != DELIVERY_OK)
		goto out;
	if (fsync(fd) < 0)
		goto write_error;
	st = deliver_link(&mt, fd, dc.stored, wire_size, result_r, error_r);
	goto out;
write_error:
	*error_r = xasprintf("maildir %s: writing the message: %s", t->path, strerror(errno));
	st = DELIVERY_TEMP;
out:
	if (in != NULL) {
		free(in);
		free(dc.conv);
		free(dc.encoded);
	}
	if (fd >= 0)
		close(fd);
	deliver_target_close(&mt);
	return st;
}

/* file_fd's contents into a new anonymous file of the maildrop (another
 * file system than the spool), fsynced. Returns its descriptor or -1. */
static int
deliver_copy_file(struct maildir_target *mt, int file_fd, char **error_r)
{
	char *buf = xmalloc(DELIVER_CHUNK);
	off_t off = 0;
	int fd = store_deliver_tmpfile(mt->tmp_fd);

	if (fd < 0)
		goto fail;
	for (;;) {
		ssize_t n = pread(file_fd, buf, DELIVER_CHUNK, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || (n > 0 && deliver_write_all(fd, buf, (size_t)n) < 0))
			goto fail;
		if (n == 0)
			break;
		off += n;
	}
	if (fsync(fd) < 0)
		goto fail;
	free(buf);
	return fd;
fail:
	*error_r = xasprintf("maildir %s: copying the message: %s", mt->path, strerror(errno));
	if (fd >= 0)
		close(fd);
	free(buf);
	return -1;
}

enum delivery_status
store_maildir_deliver_file(const struct delivery_target *t, int file_fd, uint64_t wire_size,
    struct delivery_result *result_r, char **error_r)
{
	struct maildir_target mt;
	struct stat st;
	enum delivery_status status;
	int copy_fd = -1;

	result_r->file = NULL;
	result_r->size = 0;
	if (fstat(file_fd, &st) < 0) {
		*error_r = xasprintf("spool: fstat: %s", strerror(errno));
		return DELIVERY_TEMP;
	}
	status = deliver_target_open(t->path, &mt, error_r);
	if (status != DELIVERY_OK)
		return status;
	status = deliver_check_quota(&mt, t->max_maildrop_size, wire_size, error_r);
	if (status != DELIVERY_OK)
		goto out;
	/* A message file belongs to the maildrop's owner: a spool of another
	 * uid (LMTP's, delivered as the recipient) is copied, never linked. */
	bool foreign = st.st_uid != geteuid();
	if (!foreign)
		status = deliver_link(&mt, file_fd, (uint64_t)st.st_size, wire_size, result_r, error_r);
	if (foreign || (status == DELIVERY_TEMP && mt.link_errno == EXDEV)) {
		/* another file system or owner: one copy for this maildrop */
		free(*error_r);
		*error_r = NULL;
		copy_fd = deliver_copy_file(&mt, file_fd, error_r);
		status = copy_fd < 0 ? DELIVERY_TEMP :
		    deliver_link(&mt, copy_fd, (uint64_t)st.st_size, wire_size, result_r, error_r);
	}
out:
	if (copy_fd >= 0)
		close(copy_fd);
	deliver_target_close(&mt);
	return status;
}

enum delivery_status
store_maildir_spool_open(const char *path, int *fd_r, char **error_r)
{
	struct maildir_target mt;
	enum delivery_status st = deliver_target_open(path, &mt, error_r);

	*fd_r = -1;
	if (st != DELIVERY_OK)
		return st;
	*fd_r = store_deliver_tmpfile(mt.tmp_fd);
	if (*fd_r < 0) {
		*error_r = xasprintf("maildir %s: create in tmp/: %s", path, strerror(errno));
		st = deliver_errno_status(errno);
	}
	deliver_target_close(&mt);
	return st;
}

enum delivery_status
store_maildir_deliver_check(const struct delivery_target *t, uint64_t size, char **error_r)
{
	struct maildir_target mt;
	enum delivery_status st;

	if (t->max_maildrop_size == 0)
		return DELIVERY_OK;
	st = deliver_target_open(t->path, &mt, error_r);
	if (st != DELIVERY_OK)
		return st;
	/* at least one octet: a full maildrop refuses even a declared 0 */
	st = deliver_check_quota(&mt, t->max_maildrop_size, size > 0 ? size : 1, error_r);
	deliver_target_close(&mt);
	return st;
}
