/* Maildir delivery by the rules (reliability.md §3.4): unique name, write
 * in tmp/, fsync, link into new/, fsync new/. The unique part of the name
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
#include <unistd.h>

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

static bool
maildir_begin(struct deliverer *d, const struct deliver_message *m, struct fetch_error *err)
{
	struct timeval tv;
	char host[512];

	if (d->seq == 0 && !maildir_prepare(d->target, err))
		return false;
	gettimeofday(&tv, NULL);
	maildir_hostname(host, sizeof(host));
	d->seq++;
	free(d->tmp_path);
	d->tmp_path = xasprintf("%s/tmp/%lld.M%06ldP%ldQ%u%s%s.%s", d->target,
	    (long long)tv.tv_sec, (long)tv.tv_usec, (long)getpid(), d->seq,
	    m->marker ? "_pb" : "", m->marker ? m->marker : "", host);
	d->fd = open(d->tmp_path, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (d->fd < 0)
		return disk_error(err, "cannot create", d->tmp_path);
	d->written = 0;
	return true;
}

static bool
maildir_write(struct deliverer *d, const char *data, size_t len, struct fetch_error *err)
{
	while (len > 0) {
		ssize_t n = write(d->fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return disk_error(err, "cannot write", d->tmp_path);
		data += n;
		len -= (size_t)n;
		d->written += (uint64_t)n;
	}
	return true;
}

static void
maildir_abort(struct deliverer *d)
{
	if (d->fd >= 0)
		close(d->fd);
	d->fd = -1;
	if (d->tmp_path != NULL)
		unlink(d->tmp_path);
}

static bool
maildir_commit(struct deliverer *d, struct fetch_error *err)
{
	if (fsync(d->fd) < 0) {
		disk_error(err, "cannot fsync", d->tmp_path);
		maildir_abort(d);
		return false;
	}
	int r = close(d->fd);
	d->fd = -1;
	if (r < 0) {
		disk_error(err, "cannot close", d->tmp_path);
		unlink(d->tmp_path);
		return false;
	}
	const char *base = strrchr(d->tmp_path, '/') + 1;
	char *final = xasprintf("%s/new/%s,S=%llu", d->target, base,
	    (unsigned long long)d->written);
	/* link() refuses to replace an existing file; fall back to rename()
	 * on file systems without hard links (the name is unique anyway). */
	if (link(d->tmp_path, final) == 0) {
		unlink(d->tmp_path);
	} else if (errno == EPERM || errno == ENOSYS || errno == EOPNOTSUPP || errno == EXDEV) {
		if (rename(d->tmp_path, final) < 0) {
			disk_error(err, "cannot move message to", final);
			unlink(d->tmp_path);
			free(final);
			return false;
		}
	} else {
		disk_error(err, "cannot move message to", final);
		unlink(d->tmp_path);
		free(final);
		return false;
	}
	free(final);
	char *newdir = xasprintf("%s/new", d->target);
	r = fsync_dir(newdir);
	if (r < 0)
		disk_error(err, "cannot fsync directory", newdir);
	free(newdir);
	return r == 0;
}

static void
maildir_close(struct deliverer *d)
{
	maildir_abort(d);
}

const struct deliver_ops deliver_maildir_ops = {
	"maildir", maildir_begin, maildir_write, maildir_commit, maildir_abort, maildir_close,
};

bool
deliver_maildir_scan(const char *path, void (*fn)(void *ctx, const char *marker,
    int64_t delivered_at), void *ctx, struct fetch_error *err)
{
	static const char *const sub[] = { "new", "cur" };
	for (size_t i = 0; i < N_ELEMENTS(sub); i++) {
		char *dir = xasprintf("%s/%s", path, sub[i]);
		DIR *dp = opendir(dir);
		if (dp == NULL) {
			int e = errno;
			free(dir);
			if (e == ENOENT)
				continue;
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
