/* fcntl + dot-lock on an mbox (contract in mbox_lock.h). */
#include "server/mbox_lock.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Between two tries while another program holds a lock: short enough that
 * a login waits little after an MTA's append of a few milliseconds. */
#define MBOX_LOCK_POLL_MS 20
/* "PID:HOST\n" of a dot-lock; longer content is someone else's format. */
#define MBOX_DOTLOCK_CONTENT_MAX 320

static atomic_uint mbox_lock_counter;

static uint64_t
mbox_lock_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
mbox_lock_sleep(void)
{
	struct timespec ts = { 0, MBOX_LOCK_POLL_MS * 1000000L };
	nanosleep(&ts, NULL);
}

static void
mbox_lock_hostname(char *buf, size_t size)
{
	if (gethostname(buf, size) < 0)
		snprintf(buf, size, "localhost");
	buf[size - 1] = '\0';
}

/* Is the dot-lock name (as found now) stale: its process gone on this
 * host, or untouched for MBOX_DOTLOCK_STALE_SEC? */
static bool
mbox_dotlock_stale(int dir_fd, const char *name)
{
	char buf[MBOX_DOTLOCK_CONTENT_MAX + 1];
	struct stat st;
	int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return false;   /* gone already (retry) or unreadable (wait it out) */
	if (fstat(fd, &st) < 0) {
		close(fd);
		return false;
	}
	ssize_t n = read(fd, buf, MBOX_DOTLOCK_CONTENT_MAX);
	close(fd);
	if (time(NULL) - st.st_mtime > MBOX_DOTLOCK_STALE_SEC)
		return true;
	if (n <= 0)
		return false;   /* Postfix writes none: only age tells */
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	char *host = strchr(buf, ':');
	if (host != NULL)
		*host++ = '\0';
	uint64_t pid;
	if (!parse_u64(buf, INT32_MAX, &pid) || pid == 0)
		return false;
	if (host != NULL) {
		char me[256];
		mbox_lock_hostname(me, sizeof(me));
		if (strcmp(host, me) != 0)
			return false;   /* another host's process: only age tells */
	}
	return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

/* One try at the dot-lock: 1 taken, 0 held by someone else, -1 error
 * (errno). */
static int
mbox_dotlock_try(struct mbox_lock *lock, const char *base)
{
	char host[256];
	struct stat st;
	mbox_lock_hostname(host, sizeof(host));
	char *tmp = xasprintf("%s.lock.%s.%ld.%u", base, host, (long)getpid(),
	    atomic_fetch_add(&mbox_lock_counter, 1));
	int fd = openat(lock->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	    0600);
	if (fd < 0) {
		int e = errno;
		free(tmp);
		errno = e;
		return -1;
	}
	char content[MBOX_DOTLOCK_CONTENT_MAX];
	int len = snprintf(content, sizeof(content), "%ld:%s\n", (long)getpid(), host);
	if (len < 0 || (size_t)len >= sizeof(content))
		len = snprintf(content, sizeof(content), "%ld\n", (long)getpid());
	bool wrote = write(fd, content, (size_t)len) == len;
	int e = errno;
	close(fd);
	int taken = -1;
	if (wrote) {
		/* The reply to link() can be lost on NFS: the link count of
		 * our unique file says whether it worked. */
		int lr = linkat(lock->dir_fd, tmp, lock->dir_fd, lock->dot_name, 0);
		e = lr == 0 ? 0 : errno;
		if (fstatat(lock->dir_fd, tmp, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_nlink == 2)
			taken = 1;
		else if (e == EEXIST)
			taken = 0;
	}
	unlinkat(lock->dir_fd, tmp, 0);
	free(tmp);
	errno = e;
	return taken;
}

static bool
mbox_lock_fcntl(struct mbox_lock *lock, bool write, int *err_r)
{
	struct flock fl = { .l_type = write ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET };
	if (fcntl(lock->fd, F_OFD_SETLK, &fl) == 0)
		return true;
	*err_r = errno;
	return false;
}

static void
mbox_unlock_fcntl(struct mbox_lock *lock)
{
	struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET };
	if (fcntl(lock->fd, F_OFD_SETLK, &fl) < 0)
		log_warn("mbox: fcntl unlock");
	lock->fcntl_held = false;
}

enum lock_status
mbox_lock_take(struct mbox_lock *lock, int dir_fd, const char *base, int fd, bool write,
    unsigned wait_ms, char **error_r)
{
	uint64_t deadline = mbox_lock_now_ms() + wait_ms;
	bool dot_possible = true;

	memset(lock, 0, sizeof(*lock));
	lock->fd = fd;
	lock->dir_fd = dir_fd;
	lock->dot_name = xasprintf("%s.lock", base);
	for (;;) {
		int err = 0;
		if (fd >= 0 && !lock->fcntl_held) {
			if (mbox_lock_fcntl(lock, write, &err))
				lock->fcntl_held = true;
			else if (err != EAGAIN && err != EACCES && err != EINTR) {
				*error_r = xasprintf("fcntl lock %s: %s", base, strerror(err));
				goto fail;
			}
		}
		if (fd < 0 || lock->fcntl_held) {
			int r = 0;
			if (dot_possible) {
				r = mbox_dotlock_try(lock, base);
				if (r < 0 && (errno == EACCES || errno == EPERM || errno == EROFS)) {
					/* Not our directory to write: fcntl alone,
					 * but a dot-lock of others still counts. */
					dot_possible = false;
					r = faccessat(dir_fd, lock->dot_name, F_OK, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : 2;
				} else if (r < 0) {
					*error_r = xasprintf("dot-lock %s: %s", lock->dot_name, strerror(errno));
					goto fail;
				}
			} else {
				r = faccessat(dir_fd, lock->dot_name, F_OK, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : 2;
			}
			if (r == 1) {
				lock->dot_held = true;
				return LOCK_OK;
			}
			if (r == 2)
				return LOCK_OK;
			if (mbox_dotlock_stale(dir_fd, lock->dot_name)) {
				log_warnx("mbox %s: breaking the stale dot-lock %s", base, lock->dot_name);
				if (unlinkat(dir_fd, lock->dot_name, 0) == 0 || errno == ENOENT)
					continue;
			}
			/* Never wait for the dot-lock while holding fcntl. */
			if (lock->fcntl_held)
				mbox_unlock_fcntl(lock);
		}
		if (mbox_lock_now_ms() >= deadline)
			break;
		mbox_lock_sleep();
	}
	free(lock->dot_name);
	lock->dot_name = NULL;
	return LOCK_HELD;
fail:
	if (lock->fcntl_held)
		mbox_unlock_fcntl(lock);
	free(lock->dot_name);
	lock->dot_name = NULL;
	return LOCK_ERROR;
}

void
mbox_lock_touch(struct mbox_lock *lock)
{
	if (lock->dot_held && utimensat(lock->dir_fd, lock->dot_name, NULL, AT_SYMLINK_NOFOLLOW) < 0)
		log_warn("mbox: touching %s", lock->dot_name);
}

void
mbox_lock_release(struct mbox_lock *lock)
{
	/* The dot-lock first: it was taken last. */
	if (lock->dot_held && unlinkat(lock->dir_fd, lock->dot_name, 0) < 0)
		log_warn("mbox: removing %s", lock->dot_name);
	lock->dot_held = false;
	if (lock->fcntl_held)
		mbox_unlock_fcntl(lock);
	free(lock->dot_name);
	lock->dot_name = NULL;
}
