#include "common/util.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void *
xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);
	if (p == NULL)
		fatalx("out of memory allocating %zu bytes", size);
	return p;
}

void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (p == NULL)
		fatalx("out of memory allocating %zu x %zu bytes", n, size);
	return p;
}

void *
xrealloc(void *p, size_t size)
{
	void *q = realloc(p, size ? size : 1);
	if (q == NULL)
		fatalx("out of memory reallocating %zu bytes", size);
	return q;
}

char *
xstrdup(const char *s)
{
	char *p = strdup(s);
	if (p == NULL)
		fatalx("out of memory");
	return p;
}

char *
xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);
	if (p == NULL)
		fatalx("out of memory");
	return p;
}

char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;
	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0)
		fatalx("out of memory");
	va_end(ap);
	return p;
}

bool
parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	if (s == NULL || *s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return false;
		unsigned d = (unsigned)(*s - '0');
		/* d > max first: max - d would wrap for a max under 9 */
		if (d > max || v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

bool
parse_u32(const char *s, uint32_t max, uint32_t *out)
{
	uint64_t v;
	if (!parse_u64(s, max, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

void
secure_wipe(void *p, size_t n)
{
	if (p != NULL)
		explicit_bzero(p, n);
}

void
free_secret(char *s)
{
	if (s == NULL)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

bool
const_time_eq(const void *a, const void *b, size_t n)
{
	const volatile unsigned char *x = a, *y = b;
	unsigned char d = 0;
	for (size_t i = 0; i < n; i++)
		d |= x[i] ^ y[i];
	return d == 0;
}

void
str_sanitize(char *dst, size_t size, const char *src, size_t len)
{
	size_t i;
	if (size == 0)
		return;
	for (i = 0; i < len && i + 1 < size; i++) {
		unsigned char c = (unsigned char)src[i];
		dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	dst[i] = '\0';
}

int
fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int r = fsync(fd);
	int saved = errno;
	close(fd);
	errno = saved;
	return r;
}

/* Move a buffer to a bigger one; a secret's old copy is wiped, since
 * realloc() would leave it behind in freed memory. */
static char *
read_buffer_grow(char *buf, size_t used, size_t new_size, unsigned flags)
{
	if (!(flags & UTIL_READ_SECRET))
		return xrealloc(buf, new_size);
	char *bigger = xmalloc(new_size);
	memcpy(bigger, buf, used);
	secure_wipe(buf, used);
	free(buf);
	return bigger;
}

int
util_read_file_bounded(int fd, const char *name, size_t max, unsigned flags, char **data_r,
    size_t *len_r, char **error_r)
{
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		*error_r = xasprintf("%s: not a regular file", name);
		return -1;
	}
	if ((uint64_t)st.st_size > max) {
		*error_r = xasprintf("%s: file too large (more than %zu bytes)", name, max);
		return -1;
	}
	/* Room for the size fstat saw and one byte more, so that the usual
	 * file is read in one pread and its end seen by the next. */
	size_t cap = (size_t)st.st_size + 1;
	size_t len = 0;
	char *buf = xmalloc(cap + 1);
	for (;;) {
		if (len == cap) {
			if (cap > max) {
				*error_r = xasprintf("%s: file too large (more than %zu bytes)", name, max);
				goto fail;   /* it grew while we read */
			}
			size_t next = cap > max / 2 ? max + 1 : cap * 2;
			buf = read_buffer_grow(buf, len, next + 1, flags);
			cap = next;
		}
		ssize_t n = pread(fd, buf + len, cap - len, (off_t)len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*error_r = xasprintf("%s: cannot read: %s", name, strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	*data_r = buf;
	if (len_r != NULL)
		*len_r = len;
	return 0;
fail:
	if (flags & UTIL_READ_SECRET)
		secure_wipe(buf, len);
	free(buf);
	return -1;
}

int
util_read_path_bounded(const char *path, size_t max, unsigned flags, char **data_r,
    size_t *len_r, char **error_r)
{
	/* O_NONBLOCK: opening a FIFO by mistake must not hang; it is refused
	 * as not a regular file right after. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		*error_r = xasprintf("%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	int r = util_read_file_bounded(fd, path, max, flags, data_r, len_r, error_r);
	close(fd);
	return r;
}
