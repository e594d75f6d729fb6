/* Maildir delivery by the rules (docs/RELIABILITY.md §2): unique name, write
 * in tmp/, fsync, move into new/ (renameat2 RENAME_NOREPLACE, or link +
 * unlink where that is missing), fsync new/ -- for a batch of messages at
 * a time (deliver.h): all written in tmp/, all made durable, all moved,
 * new/ fsynced once. The unique part of the name
 * carries "_pb" + a 16-hex-digit marker (digest of account and UIDL), so
 * the Maildir itself records what was delivered: a run killed between
 * delivery and deletion finds the marker next time and only deletes.
 * That is what makes delivery exactly-once, and what --rebuild-state reads.
 */
#include "client/deliver.h"
#include "common/util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/syscall.h>
#endif

#ifdef __linux__
#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#endif

/* A message this big starts its writeback as soon as it is whole. */
#define MAILDIR_EARLY_WRITEBACK (256 * 1024)

/* A message written to tmp/, not yet durable. */
struct maildir_pending {
	int fd;
	char *tmp_path;
	uint64_t written;
	char *new_name;            /* its name in new/ once moved by sync() */
};

struct maildir {
	struct deliverer base;
	int fd;                    /* the message being written, or -1 */
	char *tmp_path;            /* its path in tmp/ */
	uint64_t written;
	unsigned seq;              /* messages begun: part of the unique name */
	struct maildir_pending *pending;   /* ended, not yet synced */
	size_t npending, cappending;
	int tmpfd, newfd;          /* tmp/ and new/, open from the first message */
	bool use_syncfs;
	bool no_renameat2;         /* EINVAL/ENOSYS/EOPNOTSUPP seen: link + unlink */
	char *host;                /* the host part of unique names */
	long pid;
};

static bool
mkdir_p(const char *path, struct fetch_error *err)
{
	char *p = xstrdup(path);
	for (char *s = p + 1; *s != '\0'; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST) {
			fetch_error_set(err, EX_CANTCREAT, "cannot create %s: %s", p, strerror(errno));
			free(p);
			return false;
		}
		*s = '/';
	}
	bool ok = mkdir(p, 0700) == 0 || errno == EEXIST;
	if (!ok)
		fetch_error_set(err, EX_CANTCREAT, "cannot create %s: %s", p, strerror(errno));
	free(p);
	return ok;
}

static bool
maildir_prepare(const char *path, struct fetch_error *err)
{
	static const char *const sub[] = { "tmp", "new", "cur" };
	if (!mkdir_p(path, err))
		return false;
	for (size_t i = 0; i < N_ELEMENTS(sub); i++) {
		char *p = xasprintf("%s/%s", path, sub[i]);
		bool ok = mkdir(p, 0700) == 0 || errno == EEXIST;
		if (!ok)
			fetch_error_set(err, EX_CANTCREAT, "cannot create Maildir directory %s: %s",
			    p, strerror(errno));
		free(p);
		if (!ok)
			return false;
	}
	return true;
}

static void
maildir_hostname(char *out, size_t size)
{
	char host[256];
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	size_t o = 0;
	for (const char *p = host; *p != '\0' && o + 5 < size; p++) {
		if (*p == '/') {
			memcpy(out + o, "\\057", 4);
			o += 4;
		} else if (*p == ':') {
			memcpy(out + o, "\\072", 4);
			o += 4;
		} else {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
}

static bool
disk_error(struct fetch_error *err, const char *what, const char *path)
{
	int e = errno;
	return fetch_error_set(err, EX_IOERR, "%s %s: %s%s", what, path, strerror(e),
	    e == ENOSPC || e == EDQUOT ? " (destination full: nothing deleted on the server)" : "");
}

/* renameat2(RENAME_NOREPLACE): one system call instead of link() +
 * unlink(), with link()'s refusal to replace an existing name. -1 with
 * errno EINVAL, ENOSYS or EOPNOTSUPP where the kernel or the file system
 * lacks it (the caller then links and unlinks). */
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
static int
rename_noreplace(int olddirfd, const char *oldname, int newdirfd, const char *newname)
{
#if defined(__linux__) && defined(SYS_renameat2)
	return (int)syscall(SYS_renameat2, olddirfd, oldname, newdirfd, newname,
	    (unsigned)RENAME_NOREPLACE);
#else
	(void)olddirfd; (void)oldname; (void)newdirfd; (void)newname;
	errno = ENOSYS;
	return -1;
#endif
}

/* syncfs() makes a whole batch durable in one call, but it is as good as
 * an fsync of each file only where it reports every error: Linux 5.8 made
 * it report data writeback errors (any since the descriptor was opened),
 * but the error of the file system's own commit (ext4 journal, XFS log,
 * btrfs transaction: the ->sync_fs() return) was dropped until 5.17
 * (commit 5679897eb104, "vfs: make sync_filesystem return errors from
 * ->sync_fs"), so before 5.17 a failed commit looked like success. And
 * only where the file system's sync really reaches the disk: local
 * block file systems. FUSE (whose daemon may never see a sync), NFS and
 * the rest get an fsync per file. POPBOX_MAILDIR_FSYNC=1 forces that path
 * (tests, or a paranoid user). */
static bool
syncfs_is_enough(int dirfd)
{
#ifdef __linux__
	struct utsname u;
	struct statfs sf;
	int major = 0, minor = 0;
	const char *env = getenv("POPBOX_MAILDIR_FSYNC");

	if (env != NULL && env[0] != '\0' && strcmp(env, "0") != 0)
		return false;
	if (uname(&u) < 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return false;
	if (major < 5 || (major == 5 && minor < 17))
		return false;
	if (fstatfs(dirfd, &sf) < 0)
		return false;
	switch ((unsigned long)sf.f_type) {
	case EXT4_SUPER_MAGIC:		/* also ext2 and ext3 */
	case XFS_SUPER_MAGIC:
	case BTRFS_SUPER_MAGIC:
	case TMPFS_MAGIC:		/* nothing to write; errors still reported */
		return true;
	}
#else
	(void)dirfd;
#endif
	return false;
}

static bool
maildir_open_dirs(struct maildir *md, struct fetch_error *err)
{
	char *tmp = xasprintf("%s/tmp", md->base.target);
	char *new = xasprintf("%s/new", md->base.target);
	bool ok = false;

	/* opened before any message is written: syncfs() reports the errors
	 * of writeback that happened after this open */
	md->tmpfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (md->tmpfd < 0) {
		disk_error(err, "cannot open", tmp);
		goto out;
	}
	md->newfd = open(new, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (md->newfd < 0) {
		disk_error(err, "cannot open", new);
		close(md->tmpfd);
		md->tmpfd = -1;
		goto out;
	}
	md->use_syncfs = syncfs_is_enough(md->tmpfd);
	ok = true;
out:
	free(tmp);
	free(new);
	return ok;
}

static bool
maildir_begin(struct deliverer *d, const struct deliver_message *m, struct fetch_error *err)
{
	struct maildir *md = DELIVER_STATE(d, struct maildir);
	struct timeval tv;

	if (md->tmpfd < 0) {
		char host[512];
		if (!maildir_prepare(md->base.target, err) || !maildir_open_dirs(md, err))
			return false;
		maildir_hostname(host, sizeof(host));
		free(md->host);
		md->host = xstrdup(host);
		md->pid = (long)getpid();
	}
	gettimeofday(&tv, NULL);
	md->seq++;
	free(md->tmp_path);
	md->tmp_path = xasprintf("%s/tmp/%lld.M%06ldP%ldQ%u%s%s.%s", md->base.target,
	    (long long)tv.tv_sec, (long)tv.tv_usec, md->pid, md->seq,
	    m->marker ? "_pb" : "", m->marker ? m->marker : "", md->host);
	/* relative to the tmp/ descriptor (the one syncfs() uses): no walk
	 * of the whole path per message */
	md->fd = openat(md->tmpfd, strrchr(md->tmp_path, '/') + 1,
	    O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (md->fd < 0) {
		/* not ours (EEXIST: another writer's file): abort() and close()
		 * must not unlink it */
		disk_error(err, "cannot create", md->tmp_path);
		free(md->tmp_path);
		md->tmp_path = NULL;
		return false;
	}
	md->written = 0;
	return true;
}

static bool
maildir_write(struct deliverer *d, const char *data, size_t len, struct fetch_error *err)
{
	struct maildir *md = DELIVER_STATE(d, struct maildir);
	if (!deliver_write_all(md->fd, data, len, &md->written))
		return disk_error(err, "cannot write", md->tmp_path);
	return true;
}

static void
maildir_abort(struct deliverer *d)
{
	struct maildir *md = DELIVER_STATE(d, struct maildir);
	if (md->fd >= 0)
		close(md->fd);
	md->fd = -1;
	if (md->tmp_path != NULL)
		unlink(md->tmp_path);
	free(md->tmp_path);
	md->tmp_path = NULL;
}

/* The message is whole in tmp/: keep it for the next sync(). */
static bool
maildir_end(struct deliverer *d, struct fetch_error *err)
{
	struct maildir *md = DELIVER_STATE(d, struct maildir);
	if (md->npending == md->cappending) {
		md->cappending = md->cappending ? md->cappending * 2 : 64;
		md->pending = xrealloc(md->pending, md->cappending * sizeof(*md->pending));
	}
	struct maildir_pending *p = &md->pending[md->npending++];
	p->fd = md->fd;
	p->tmp_path = md->tmp_path;
	p->written = md->written;
	p->new_name = NULL;
	md->fd = -1;
	md->tmp_path = NULL;
#ifdef __linux__
	/* Start the writeback now, so that the sync mostly waits for work
	 * already done (a hint: its errors surface at the sync). One syncfs
	 * does better for a batch of small files on its own. */
	if (!md->use_syncfs || p->written >= MAILDIR_EARLY_WRITEBACK)
		(void)sync_file_range(p->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
#endif
	return true;
}

/* Forget the batch: close and remove what is still in tmp/. */
static void
maildir_drop_pending(struct maildir *md)
{
	for (size_t i = 0; i < md->npending; i++) {
		struct maildir_pending *p = &md->pending[i];
		if (p->fd >= 0)
			close(p->fd);
		if (p->tmp_path != NULL)
			unlink(p->tmp_path);
		free(p->tmp_path);
		free(p->new_name);
	}
	md->npending = 0;
}

/* The data of every pending file on disk (one syncfs, or an fsync per
 * file), then every descriptor closed. */
static bool
maildir_sync_data(struct maildir *md, struct fetch_error *err)
{
	bool ok = true;
	uint64_t bytes = 0;
	size_t i;

	for (i = 0; i < md->npending; i++)
		bytes += md->pending[i].written;
	/* syncfs() also writes whatever else is dirty on the file system:
	 * worth it for many small files, not for a few big ones (their own
	 * writeback, started early, is most of the cost anyway) */
	if (md->use_syncfs && md->npending > 1 &&
	    bytes / md->npending < MAILDIR_EARLY_WRITEBACK) {
		if (syncfs(md->tmpfd) < 0)
			ok = disk_error(err, "cannot sync the file system of", md->base.target);
	} else {
		for (i = 0; ok && i < md->npending; i++)
			if (fsync(md->pending[i].fd) < 0)
				ok = disk_error(err, "cannot fsync", md->pending[i].tmp_path);
	}
	for (i = 0; i < md->npending; i++) {
		struct maildir_pending *p = &md->pending[i];
		if (close(p->fd) < 0 && ok)
			ok = disk_error(err, "cannot close", p->tmp_path);
		p->fd = -1;
	}
	return ok;
}

/* link() refuses to replace an existing file; fall back to rename() on
 * file systems without hard links (the name is unique anyway). False
 * with errno set. */
static bool
maildir_link(struct maildir *md, const char *base, const char *final_base)
{
	if (linkat(md->tmpfd, base, md->newfd, final_base, 0) == 0) {
		unlinkat(md->tmpfd, base, 0);
		return true;
	}
	if (errno == EPERM || errno == ENOSYS || errno == EOPNOTSUPP || errno == EXDEV)
		return renameat(md->tmpfd, base, md->newfd, final_base) == 0;
	return false;
}

/* Move one synced file from tmp/ into new/ under its final name. */
static bool
maildir_move(struct maildir *md, struct maildir_pending *p, struct fetch_error *err)
{
	const char *base = strrchr(p->tmp_path, '/') + 1;
	char *final = xasprintf("%s/new/%s,S=%llu", md->base.target, base,
	    (unsigned long long)p->written);
	const char *final_base = strrchr(final, '/') + 1;
	int r = -1;

	/* One renameat2(RENAME_NOREPLACE) moves the synced file from tmp/ to
	 * new/ atomically (same file system) and, like link(), never
	 * replaces an existing file: EEXIST is an error as it always was. A
	 * crash leaves the name in tmp/ or in new/, and the marker in new/ is
	 * what the next run looks for. */
	if (!md->no_renameat2) {
		r = rename_noreplace(md->tmpfd, base, md->newfd, final_base);
		/* not on this kernel or file system: link + unlink from now on */
		if (r < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP))
			md->no_renameat2 = true;
	}
	bool ok = r == 0 || (md->no_renameat2 && maildir_link(md, base, final_base));
	if (ok) {
		free(p->tmp_path);
		p->tmp_path = NULL;
		p->new_name = xstrdup(final_base);
	} else {
		disk_error(err, "cannot move message to", final);
	}
	free(final);
	return ok;
}

/* What reached new/ must be durable there or gone: a later run that finds
 * a marker in new/ deletes the message on the server. So new/ is fsynced
 * whenever something was moved, even when a later move failed (the run
 * still fails and deletes nothing; the next run finds the moved ones and
 * deletes them), and if that fsync fails the names moved by this batch
 * are removed again (downloaded again next run). A kill between the moves
 * and this fsync is covered by the scan, which fsyncs new/ before any
 * marker is trusted. ok: the batch so far; returns it, false if the fsync
 * failed. */
static bool
maildir_sync_new(struct maildir *md, bool ok, struct fetch_error *err)
{
	bool moved = false;
	size_t i;

	for (i = 0; i < md->npending; i++)
		moved = moved || md->pending[i].new_name != NULL;
	if (!moved || fsync(md->newfd) == 0)
		return ok;
	if (ok) {
		char *newdir = xasprintf("%s/new", md->base.target);
		ok = disk_error(err, "cannot fsync directory", newdir);
		free(newdir);
	}
	for (i = 0; i < md->npending; i++)
		if (md->pending[i].new_name != NULL)
			(void)unlinkat(md->newfd, md->pending[i].new_name, 0);
	return ok;
}

/* docs/RELIABILITY.md §2 for the whole batch: the data of every file is on
 * disk (one syncfs, or an fsync per file) before any of them is moved
 * into new/ (renameat2, or link + unlink), and new/ is fsynced once after
 * the last move. */
static bool
maildir_sync(struct deliverer *d, struct fetch_error *err)
{
	struct maildir *md = DELIVER_STATE(d, struct maildir);

	if (md->npending == 0)
		return true;
	bool ok = maildir_sync_data(md, err);
	for (size_t i = 0; ok && i < md->npending; i++)
		ok = maildir_move(md, &md->pending[i], err);
	ok = maildir_sync_new(md, ok, err);
	/* whatever was not moved goes from tmp/ */
	maildir_drop_pending(md);
	return ok;
}

static bool
maildir_commit(struct deliverer *d, struct fetch_error *err)
{
	return maildir_end(d, err) && maildir_sync(d, err);
}

static struct deliverer *
maildir_create(void)
{
	struct maildir *md = xcalloc(1, sizeof(*md));
	md->fd = md->tmpfd = md->newfd = -1;
	return &md->base;
}

static void
maildir_destroy(struct deliverer *d)
{
	struct maildir *md = DELIVER_STATE(d, struct maildir);
	maildir_abort(d);
	maildir_drop_pending(md);
	free(md->pending);
	if (md->tmpfd >= 0)
		close(md->tmpfd);
	if (md->newfd >= 0)
		close(md->newfd);
	free(md->host);
	free(md);
}

const struct deliver_ops deliver_maildir_ops = {
	.name = "maildir",
	.create = maildir_create,
	.destroy = maildir_destroy,
	.begin = maildir_begin,
	.write = maildir_write,
	.commit = maildir_commit,
	.abort = maildir_abort,
	.end = maildir_end,
	.sync = maildir_sync,
	.scan = deliver_maildir_scan,
};

/* Maildir's rule: a file in tmp/ untouched for 36 hours is a delivery
 * that died (here: a batch of up to 64 whose run was killed before the
 * move into new/). Removed at the next scan, best effort: a failure to
 * remove one costs disk space, never mail (the message is still on the
 * server, or already in new/ under its final name). */
#define MAILDIR_TMP_STALE_SEC (36 * 3600)

static void
maildir_clean_tmp(const char *path)
{
	char *dir = xasprintf("%s/tmp", path);
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0)
		return;
	DIR *dp = fdopendir(fd);
	if (dp == NULL) {
		close(fd);
		return;
	}
	time_t now = time(NULL);
	struct dirent *de;
	while ((de = readdir(dp)) != NULL) {
		struct stat st;
		if (de->d_name[0] == '.' ||
		    fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue;
		/* mtime: a delivery still writing keeps it current */
		if (now - st.st_mtime > MAILDIR_TMP_STALE_SEC)
			(void)unlinkat(fd, de->d_name, 0);
	}
	closedir(dp);
}

bool
deliver_maildir_scan(const char *path, deliver_marker_fn *fn, void *ctx,
    struct fetch_error *err)
{
	static const char *const sub[] = { "new", "cur" };
	maildir_clean_tmp(path);
	for (size_t i = 0; i < N_ELEMENTS(sub); i++) {
		char *dir = xasprintf("%s/%s", path, sub[i]);
		int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *dp = NULL;
		if (fd < 0) {
			int e = errno;
			free(dir);
			if (e == ENOENT)
				continue;
			return fetch_error_set(err, EX_IOERR, "cannot read Maildir %s: %s", path,
			    strerror(e));
		}
		/* A marker found here makes this run delete the message on the
		 * server, so its name must be durable first: a run killed (or
		 * failing) between its moves into new/ and the fsync of new/
		 * left names that a power loss would still take away. */
		if (fsync(fd) < 0) {
			int e = errno;
			close(fd);
			fetch_error_set(err, EX_IOERR, "cannot fsync directory %s: %s (nothing "
			    "deleted on the server)", dir, strerror(e));
			free(dir);
			return false;
		}
		if ((dp = fdopendir(fd)) == NULL) {
			int e = errno;
			close(fd);
			free(dir);
			return fetch_error_set(err, EX_IOERR, "cannot read Maildir %s: %s", path,
			    strerror(e));
		}
		struct dirent *de;
		while ((de = readdir(dp)) != NULL) {
			const char *name = de->d_name;
			const char *dot = strchr(name, '.');
			if (dot == NULL)
				continue;
			/* the marker lives in the unique part: between the first
			 * and the second dot */
			const char *pb = strstr(name, "_pb");
			if (pb == NULL || pb < dot)
				continue;
			const char *h = pb + 3;
			size_t k = 0;
			while (k < 16 && isxdigit((unsigned char)h[k]) && !isupper((unsigned char)h[k]))
				k++;
			if (k != 16 || h[16] != '.')
				continue;
			char marker[17];
			memcpy(marker, h, 16);
			marker[16] = '\0';
			int64_t t = strtoll(name, NULL, 10);
			fn(ctx, marker, t);
		}
		closedir(dp);
		free(dir);
	}
	return true;
}
