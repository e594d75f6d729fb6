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

struct mbox {
	struct deliverer base;
	int fd;                    /* the mbox, open and locked during a message; else -1 */
	uint64_t start_offset;     /* its size before this message */
	bool at_bol;               /* at the start of a line */
	int gt_count, from_match;  /* ">*From " quoting: what is held back */
};

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
journal_recover(struct mbox *mb, struct fetch_error *err)
{
	char *jp = journal_path(mb->base.target);
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
	if (n > 0 && parse_u64(buf, INT64_MAX, &offset) && fstat(mb->fd, &st) == 0 &&
	    (uint64_t)st.st_size > offset) {
		/* count From_ lines after offset */
		char chunk[8192];
		uint64_t pos = offset;
		int froms = 0;
		bool bol = true;
		while (pos < (uint64_t)st.st_size && froms < 2) {
			ssize_t r = pread(mb->fd, chunk, sizeof(chunk), (off_t)pos);
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
			int wfd = open(mb->base.target, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
			if (wfd < 0 || ftruncate(wfd, (off_t)offset) < 0 || fsync(wfd) < 0) {
				if (wfd >= 0)
					close(wfd);
				free(jp);
				return io_fail(err, "cannot remove a partial message from",
				    mb->base.target);
			}
			close(wfd);
			log_warnx("%s: removed a partial message left by an interrupted run",
			    mb->base.target);
		}
	}
	unlink(jp);
	fsync_parent(jp);
	free(jp);
	return true;
}

static bool
journal_write(struct mbox *mb, struct fetch_error *err)
{
	char *jp = journal_path(mb->base.target);
	int fd = open(jp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%llu %ld\n", (unsigned long long)mb->start_offset,
	    (long)getpid());
	bool ok = fd >= 0 && write(fd, buf, (size_t)n) == n && fsync(fd) == 0;
	if (fd >= 0 && close(fd) < 0)
		ok = false;
	if (ok)
		ok = fsync_parent(jp);
	if (!ok)
		io_fail(err, "cannot write the append journal for", mb->base.target);
	free(jp);
	return ok;
}

static void
journal_remove(struct mbox *mb)
{
	char *jp = journal_path(mb->base.target);
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
mbox_emit(struct mbox *mb, const char *data, size_t len, struct fetch_error *err)
{
	if (!deliver_write_all(mb->fd, data, len, NULL))
		return io_fail(err, "cannot write", mb->base.target);
	return true;
}

static bool
mbox_begin(struct deliverer *d, const struct deliver_message *m, struct fetch_error *err)
{
	struct mbox *mb = DELIVER_STATE(d, struct mbox);
	mb->fd = open(mb->base.target, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC,
	    0600);
	if (mb->fd < 0)
		return io_fail(err, "cannot open", mb->base.target);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int tries;
	for (tries = 0; tries < MBOX_LOCK_WAIT_SEC * 10; tries++) {
		if (fcntl(mb->fd, F_SETLK, &fl) == 0)
			break;
		if (errno != EACCES && errno != EAGAIN && errno != EINTR) {
			io_fail(err, "cannot lock", mb->base.target);
			goto fail;
		}
		usleep(100 * 1000);
	}
	if (tries == MBOX_LOCK_WAIT_SEC * 10) {
		fetch_error_set(err, EX_TEMPFAIL, "mbox %s is locked by another program",
		    mb->base.target);
		goto fail;
	}
	if (!dotlock_take(mb->base.target, err))
		goto fail;
	if (!journal_recover(mb, err))
		goto fail_dot;
	off_t end = lseek(mb->fd, 0, SEEK_END);
	if (end < 0) {
		io_fail(err, "cannot seek", mb->base.target);
		goto fail_dot;
	}
	mb->start_offset = (uint64_t)end;
	if (!journal_write(mb, err))
		goto fail_dot;
	char last = '\n';
	if (end > 0 && pread(mb->fd, &last, 1, end - 1) != 1)
		last = '\n';
	time_t now = time(NULL);
	char when[64];
	struct tm tm;
	strftime(when, sizeof(when), "%a %b %e %H:%M:%S %Y", localtime_r(&now, &tm));
	char from[128];
	int n = snprintf(from, sizeof(from), "%sFrom MAILER-DAEMON %s\n",
	    last != '\n' ? "\n\n" : "", when);
	if (!mbox_emit(mb, from, (size_t)n, err))
		goto fail_trunc;
	mb->at_bol = true;
	mb->gt_count = 0;
	mb->from_match = 0;
	return true;
fail_trunc:
	if (ftruncate(mb->fd, (off_t)mb->start_offset) < 0) { /* reported already */ }
fail_dot:
	dotlock_release(mb->base.target);
fail:
	close(mb->fd);
	mb->fd = -1;
	return false;
}

static const char from_[] = "From ";

/* The start of a line was held back while it could still be ">*From ":
 * write what is buffered in out[0..*o), then the held '>'s and the
 * matched part of "From "; the rest of the line is not quoting. */
static bool
mbox_release(struct mbox *mb, char *out, size_t *o, struct fetch_error *err)
{
	if (!mbox_emit(mb, out, *o, err))
		return false;
	*o = 0;
	for (int k = 0; k < mb->gt_count; k++)
		if (!mbox_emit(mb, ">", 1, err))
			return false;
	if (!mbox_emit(mb, from_, (size_t)mb->from_match, err))
		return false;
	mb->at_bol = false;
	mb->gt_count = mb->from_match = 0;
	return true;
}

static bool
mbox_write(struct deliverer *d, const char *data, size_t len, struct fetch_error *err)
{
	struct mbox *mb = DELIVER_STATE(d, struct mbox);
	char out[8192 + 64];
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		char c = data[i];
		if (o + 2 * 5 + (size_t)mb->gt_count >= sizeof(out) - 8 || mb->gt_count > 1000) {
			if (!mbox_emit(mb, out, o, err))
				return false;
			o = 0;
		}
		if (mb->at_bol) {
			if (mb->from_match == 0 && c == '>' && mb->gt_count < 1000) {
				mb->gt_count++;
				continue;
			}
			if (c == from_[mb->from_match]) {
				if (++mb->from_match == 5) {
					/* a From_ line: one more '>' */
					out[o++] = '>';
					if (!mbox_release(mb, out, &o, err))
						return false;
				}
				continue;
			}
			/* not a From_ line */
			if (!mbox_release(mb, out, &o, err))
				return false;
		}
		out[o++] = c;
		if (c == '\n')
			mb->at_bol = true;
	}
	return mbox_emit(mb, out, o, err);
}

static void
mbox_abort(struct deliverer *d)
{
	struct mbox *mb = DELIVER_STATE(d, struct mbox);
	if (mb->fd < 0)
		return;
	/* take the partial message out again */
	if (ftruncate(mb->fd, (off_t)mb->start_offset) == 0 && fsync(mb->fd) == 0)
		journal_remove(mb);
	dotlock_release(mb->base.target);
	close(mb->fd);
	mb->fd = -1;
}

static bool
mbox_commit(struct deliverer *d, struct fetch_error *err)
{
	struct mbox *mb = DELIVER_STATE(d, struct mbox);
	char held[1100];
	size_t h = 0;
	for (int k = 0; k < mb->gt_count && h < sizeof(held) - 8; k++)
		held[h++] = '>';
	memcpy(held + h, from_, (size_t)mb->from_match);
	h += (size_t)mb->from_match;
	bool bol = mb->at_bol && h == 0;
	if (h > 0 && !mbox_emit(mb, held, h, err))
		goto fail;
	/* the message ends with a newline, then one empty line separates */
	if (!mbox_emit(mb, bol ? "\n" : "\n\n", bol ? 1 : 2, err))
		goto fail;
	if (fsync(mb->fd) < 0) {
		io_fail(err, "cannot fsync", mb->base.target);
		goto fail;
	}
	/* durable: the journal must go (durably) before the server may delete */
	journal_remove(mb);
	dotlock_release(mb->base.target);
	int r = close(mb->fd);
	mb->fd = -1;
	if (r < 0)
		return io_fail(err, "cannot close", mb->base.target);
	return true;
fail:
	mbox_abort(d);
	return false;
}

static struct deliverer *
mbox_create(void)
{
	struct mbox *mb = xcalloc(1, sizeof(*mb));
	mb->fd = -1;
	return &mb->base;
}

static void
mbox_destroy(struct deliverer *d)
{
	mbox_abort(d);
	free(DELIVER_STATE(d, struct mbox));
}

const struct deliver_ops deliver_mbox_ops = {
	.name = "mbox",
	.create = mbox_create,
	.destroy = mbox_destroy,
	.begin = mbox_begin,
	.write = mbox_write,
	.commit = mbox_commit,
	.abort = mbox_abort,
};
