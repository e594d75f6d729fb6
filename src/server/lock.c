/* Maildrop session lock (contract in lock.h). */
#include "server/lock.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

struct lock {
	int fd;
	dev_t dev;
	ino_t ino;
	struct lock *next;
};

/* Locks held by this process. Few per worker (one per logged-in session), so
 * a list is enough. The mutex because stores may be opened from a thread
 * pool (docs/DESIGN.md "Process model": long disk work off the event loop). */
static struct lock *lock_held;
static pthread_mutex_t lock_table_mutex = PTHREAD_MUTEX_INITIALIZER;

enum lock_status
lock_acquire(int dir_fd, const char *name, struct lock **lock_r, char **error_r)
{
	struct lock *lock;
	struct stat st;
	int fd;

	/* O_RDWR: NFS emulates flock with fcntl write locks, which need a
	 * descriptor open for writing. */
	fd = openat(dir_fd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK,
	    0600);
	if (fd < 0) {
		int saved = errno;
		*error_r = xasprintf("open lock file %s: %s", name, strerror(saved));
		errno = saved;
		return LOCK_ERROR;
	}
	if (fstat(fd, &st) < 0) {
		int saved = errno;
		*error_r = xasprintf("fstat lock file %s: %s", name, strerror(saved));
		close(fd);
		errno = saved;
		return LOCK_ERROR;
	}
	if (!S_ISREG(st.st_mode)) {
		*error_r = xasprintf("lock file %s: not a regular file", name);
		close(fd);
		errno = EINVAL;
		return LOCK_ERROR;
	}

	pthread_mutex_lock(&lock_table_mutex);
	for (lock = lock_held; lock != NULL; lock = lock->next) {
		if (lock->dev == st.st_dev && lock->ino == st.st_ino) {
			pthread_mutex_unlock(&lock_table_mutex);
			close(fd);
			return LOCK_HELD;
		}
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int saved = errno;
		pthread_mutex_unlock(&lock_table_mutex);
		close(fd);
		if (saved == EWOULDBLOCK)
			return LOCK_HELD;
		*error_r = xasprintf("flock %s: %s", name, strerror(saved));
		errno = saved;
		return LOCK_ERROR;
	}
	lock = xcalloc(1, sizeof(*lock));
	lock->fd = fd;
	lock->dev = st.st_dev;
	lock->ino = st.st_ino;
	lock->next = lock_held;
	lock_held = lock;
	pthread_mutex_unlock(&lock_table_mutex);
	*lock_r = lock;
	return LOCK_OK;
}

void
lock_release(struct lock *lock)
{
	struct lock **lp;

	if (lock == NULL)
		return;
	/* Close and unlist under the mutex, so a concurrent lock_acquire sees
	 * either both (held) or neither (free), never a spurious IN-USE. */
	pthread_mutex_lock(&lock_table_mutex);
	for (lp = &lock_held; *lp != NULL; lp = &(*lp)->next) {
		if (*lp == lock) {
			*lp = lock->next;
			break;
		}
	}
	if (close(lock->fd) < 0)
		log_warn("close lock file");
	pthread_mutex_unlock(&lock_table_mutex);
	free(lock);
}
