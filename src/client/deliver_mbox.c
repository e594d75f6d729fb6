/* mbox delivery in mboxrd format (a line matching ">*From " gets one more
 * '>'), locked the Debian way (Policy §11.6): fcntl first, then a dotlock,
 * both with a bounded wait. A failed message is cut off again with
 * ftruncate, so the mbox never holds half a message.
 *
 * kill -9 in the middle of an append: before appending, the start offset
 * is written to MBOX.popbox-append (fsynced); it is removed (and the
 * directory fsynced) only after the message is durable. The next delivery
 * finds the journal under the lock and cuts the partial message off again,
 * provided nothing but that one message follows the offset.
 * At least once: a run killed after the append but before the server
 * deleted the message delivers it again next time. */
#include "client/deliver.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* How long to wait for another program's lock (Dovecot gives up after 5 min). */
#define MBOX_LOCK_WAIT_SEC 60
/* A dotlock not touched for this long is stale (Dovecot: 2 min). */
#define MBOX_DOTLOCK_STALE_SEC 120

static bool
io_fail(struct fetch_error *err, const char *what, const char *path)
{
	int e = errno;
	return fetch_error_set(err, EX_IOERR, "mbox %s: %s: %s%s", path, what, strerror(e),
	    e == ENOSPC || e == EDQUOT ? " (destination full: nothing deleted on the server)" : "");
}

/* A dotlock holds the PID of its owner (ours do; liblockfile's too). If
 * that process is gone on this host, the lock is stale at once. */
static bool
dotlock_owner_dead(const char *lock)
{
	char buf[32];
	int fd = open(lock, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	uint64_t pid;
	if (!parse_u64(buf, INT32_MAX, &pid) || pid == 0)
		return false;
	return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

static char *
journal_path(const char *mbox)
{
	return xasprintf("%s.popbox-append", mbox);
}

static bool
fsync_parent(const char *path)
{
	char *copy = xstrdup(path);
	int r = fsync_dir(dirname(copy));
	free(copy);
	return r == 0;
}

/* Under the lock: undo a partial append left by a killed run. Only cut
 * if the bytes after the offset are a single message (one From_ line),
 * i.e. nobody appended after it; otherwise leave them (never lose mail). */
static bool
journal_recover(struct deliverer *d, struct fetch_error *err)
{
	char *jp = journal_path(d->target);
	char buf[64];
	int jfd = open(jp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (jfd < 0) {
		free(jp);
		return true;
	}
	ssize_t n = read(jfd, buf, sizeof(buf) - 1);
	close(jfd);
	uint64_t offset;
	buf[n > 0 ? n : 0] = '\0';
	buf[strcspn(buf, " \n")] = '\0';
	struct stat st;
	if (n > 0 && parse_u64(buf, INT64_MAX, &offset) && fstat(d->fd, &st) == 0 &&
	    (uint64_t)st.st_size > offset) {
		/* count From_ lines after offset */
		char chunk[8192];
		uint64_t pos = offset;
		int froms = 0;
		bool bol = true;
		while (pos < (uint64_t)st.st_size && froms < 2) {
			ssize_t r = pread(d->fd, chunk, sizeof(chunk), (off_t)pos);
			if (r <= 0)
				break;
			for (ssize_t i = 0; i < r; i++) {
				if (bol && r - i >= 5 && memcmp(chunk + i, "From ", 5) == 0)
					froms++;
				bol = chunk[i] == '\n';
			}
			pos += (uint64_t)r;	/* a From_ split across chunks is missed: safe side */
		}
		if (froms <= 1) {
			int wfd = open(d->target, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
			if (wfd < 0 || ftruncate(wfd, (off_t)offset) < 0 || fsync(wfd) < 0) {
				if (wfd >= 0)
					close(wfd);
				free(jp);
				return io_fail(err, "cannot remove a partial message from", d->target);
			}
			close(wfd);
			log_warnx("%s: removed a partial message left by an interrupted run",
			    d->target);
		}
	}
	unlink(jp);
	fsync_parent(jp);
	free(jp);
	return true;
}

static bool
journal_write(struct deliverer *d, struct fetch_error *err)
{
	char *jp = journal_path(d->target);
	int fd = open(jp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%llu %ld\n", (unsigned long long)d->start_offset,
	    (long)getpid());
	bool ok = fd >= 0 && write(fd, buf, (size_t)n) == n && fsync(fd) == 0;
	if (fd >= 0 && close(fd) < 0)
		ok = false;
	if (ok)
		ok = fsync_parent(jp);
	if (!ok)
		io_fail(err, "cannot write the append journal for", d->target);
	free(jp);
	return ok;
}

static void
journal_remove(struct deliverer *d)
{
	char *jp = journal_path(d->target);
	unlink(jp);
	fsync_parent(jp);
	free(jp);
}

static bool
dotlock_take(const char *path, struct fetch_error *err)
{
	char *lock = xasprintf("%s.lock", path);
	bool ok = false;
	/* The lock appears with our PID already in it (written to a unique
	 * file, then link()ed into place, the NFS-safe way): a run killed at
	 * any moment never leaves an anonymous lock others must wait out. */
	char *tmp = xasprintf("%s.%ld.popbox-lock", lock, (long)getpid());
	for (int tries = 0; tries < MBOX_LOCK_WAIT_SEC * 10; tries++) {
		int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd >= 0) {
			char pid[32];
			int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
			bool wrote = write(fd, pid, (size_t)n) == n;
			close(fd);
			int r = wrote ? link(tmp, lock) : -1;
			int e = errno;
			unlink(tmp);
			if (r == 0) {
				ok = true;
				break;
			}
			errno = wrote ? e : EIO;
		}
		if (errno == EACCES || errno == EROFS || errno == EPERM) {
			/* no write access to the directory (e.g. /var/mail without
			 * setgid mail): fcntl alone, as mpop and getmail do */
			free(tmp);
			free(lock);
			return true;
		}
		if (errno != EEXIST)
			break;
		struct stat st;
		if (dotlock_owner_dead(lock)) {
			log_warnx("removing dotlock %s of a process that no longer exists", lock);
			unlink(lock);
			continue;
		}
		if (stat(lock, &st) == 0 && time(NULL) - st.st_mtime > MBOX_DOTLOCK_STALE_SEC) {
			log_warnx("removing stale dotlock %s", lock);
			unlink(lock);
			continue;
		}
		usleep(100 * 1000);
	}
	if (!ok)
		fetch_error_set(err, EX_TEMPFAIL, "cannot take the dotlock %s", lock);
	free(tmp);
	free(lock);
	return ok;
}

static void
dotlock_release(const char *path)
{
	char *lock = xasprintf("%s.lock", path);
	unlink(lock);
	free(lock);
}

static bool
mbox_emit(struct deliverer *d, const char *data, size_t len, struct fetch_error *err)
{
	while (len > 0) {
		ssize_t n = write(d->fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return io_fail(err, "cannot write", d->target);
		data += n;
		len -= (size_t)n;
		d->written += (uint64_t)n;
	}
	return true;
}

static bool
mbox_begin(struct deliverer *d, const struct deliver_message *m, struct fetch_error *err)
{
	d->fd = open(d->target, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (d->fd < 0)
		return io_fail(err, "cannot open", d->target);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int tries;
	for (tries = 0; tries < MBOX_LOCK_WAIT_SEC * 10; tries++) {
		if (fcntl(d->fd, F_SETLK, &fl) == 0)
			break;
		if (errno != EACCES && errno != EAGAIN && errno != EINTR) {
			io_fail(err, "cannot lock", d->target);
			goto fail;
		}
		usleep(100 * 1000);
	}
	if (tries == MBOX_LOCK_WAIT_SEC * 10) {
		fetch_error_set(err, EX_TEMPFAIL, "mbox %s is locked by another program", d->target);
		goto fail;
	}
	if (!dotlock_take(d->target, err))
		goto fail;
	if (!journal_recover(d, err))
		goto fail_dot;
	off_t end = lseek(d->fd, 0, SEEK_END);
	if (end < 0) {
		io_fail(err, "cannot seek", d->target);
		goto fail_dot;
	}
	d->start_offset = (uint64_t)end;
	d->written = 0;
	if (!journal_write(d, err))
		goto fail_dot;
	char last = '\n';
	if (end > 0 && pread(d->fd, &last, 1, end - 1) != 1)
		last = '\n';
	time_t now = time(NULL);
	char when[64];
	struct tm tm;
	strftime(when, sizeof(when), "%a %b %e %H:%M:%S %Y", localtime_r(&now, &tm));
	char from[128];
	int n = snprintf(from, sizeof(from), "%sFrom MAILER-DAEMON %s\n",
	    last != '\n' ? "\n\n" : "", when);
	if (!mbox_emit(d, from, (size_t)n, err))
		goto fail_trunc;
	d->at_bol = true;
	d->gt_count = 0;
	d->from_match = 0;
	return true;
fail_trunc:
	if (ftruncate(d->fd, (off_t)d->start_offset) < 0) { /* reported already */ }
fail_dot:
	dotlock_release(d->target);
fail:
	close(d->fd);
	d->fd = -1;
	return false;
}

static const char from_[] = "From ";

static bool
mbox_write(struct deliverer *d, const char *data, size_t len, struct fetch_error *err)
{
	char out[8192 + 64];
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		char c = data[i];
		if (o + 2 * 5 + (size_t)d->gt_count >= sizeof(out) - 8 || d->gt_count > 1000) {
			if (!mbox_emit(d, out, o, err))
				return false;
			o = 0;
		}
		if (d->at_bol) {
			if (d->from_match == 0 && c == '>' && d->gt_count < 1000) {
				d->gt_count++;
				continue;
			}
			if (c == from_[d->from_match]) {
				if (++d->from_match == 5) {
					out[o++] = '>';
					if (!mbox_emit(d, out, o, err))
						return false;
					o = 0;
					for (int k = 0; k < d->gt_count; k++)
						if (!mbox_emit(d, ">", 1, err))
							return false;
					if (!mbox_emit(d, from_, 5, err))
						return false;
					d->at_bol = false;
					d->gt_count = d->from_match = 0;
				}
				continue;
			}
			/* not a From_ line: release what was held back */
			if (!mbox_emit(d, out, o, err))
				return false;
			o = 0;
			for (int k = 0; k < d->gt_count; k++)
				if (!mbox_emit(d, ">", 1, err))
					return false;
			if (!mbox_emit(d, from_, (size_t)d->from_match, err))
				return false;
			d->at_bol = false;
			d->gt_count = d->from_match = 0;
		}
		out[o++] = c;
		if (c == '\n')
			d->at_bol = true;
	}
	return mbox_emit(d, out, o, err);
}

static void
mbox_abort(struct deliverer *d)
{
	if (d->fd < 0)
		return;
	/* take the partial message out again */
	if (ftruncate(d->fd, (off_t)d->start_offset) == 0 && fsync(d->fd) == 0)
		journal_remove(d);
	dotlock_release(d->target);
	close(d->fd);
	d->fd = -1;
}

static bool
mbox_commit(struct deliverer *d, struct fetch_error *err)
{
	char held[1100];
	size_t h = 0;
	for (int k = 0; k < d->gt_count && h < sizeof(held) - 8; k++)
		held[h++] = '>';
	memcpy(held + h, from_, (size_t)d->from_match);
	h += (size_t)d->from_match;
	bool bol = d->at_bol && h == 0;
	if (h > 0 && !mbox_emit(d, held, h, err))
		goto fail;
	/* the message ends with a newline, then one empty line separates */
	if (!mbox_emit(d, bol ? "\n" : "\n\n", bol ? 1 : 2, err))
		goto fail;
	if (fsync(d->fd) < 0) {
		io_fail(err, "cannot fsync", d->target);
		goto fail;
	}
	/* durable: the journal must go (durably) before the server may delete */
	journal_remove(d);
	dotlock_release(d->target);
	int r = close(d->fd);
	d->fd = -1;
	if (r < 0)
		return io_fail(err, "cannot close", d->target);
	return true;
fail:
	mbox_abort(d);
	return false;
}

static void
mbox_close(struct deliverer *d)
{
	mbox_abort(d);
}

const struct deliver_ops deliver_mbox_ops = {
	"mbox", mbox_begin, mbox_write, mbox_commit, mbox_abort, mbox_close,
	NULL, NULL,
};
