/* mda: delivery: the message is piped to COMMAND run by /bin/sh -c, byte
 * exact (LF line ends, no From_ line, nothing added). Exit 0 means
 * delivered; anything else means not delivered (the message stays on the
 * server). A command that stops reading early but exits 0 is NOT trusted:
 * it may have dropped the rest. */
#include "client/deliver.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static bool
mda_begin(struct deliverer *d, const struct deliver_message *m, struct fetch_error *err)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return fetch_error_set(err, EX_OSERR, "pipe: %s", strerror(errno));
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		close(p[0]);
		close(p[1]);
		return fetch_error_set(err, EX_OSERR, "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		char num[32];
		dup2(p[0], 0);
		snprintf(num, sizeof(num), "%u", m->number);
		setenv("POPBOX_ACCOUNT", d->account_name, 1);
		setenv("POPBOX_MSGNUM", num, 1);
		if (m->uidl != NULL)
			setenv("POPBOX_UIDL", m->uidl, 1);
		signal(SIGPIPE, SIG_DFL);
		execl("/bin/sh", "sh", "-c", d->target, (char *)NULL);
		_exit(127);
	}
	close(p[0]);
	d->fd = p[1];
	d->child_pid = pid;
	d->broken_pipe = false;
	d->written = 0;
	return true;
}

static bool
mda_write(struct deliverer *d, const char *data, size_t len, struct fetch_error *err)
{
	while (len > 0 && !d->broken_pipe) {
		ssize_t n = write(d->fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			/* the command stopped reading: its exit status decides,
			 * but a short read is never counted as delivered */
			d->broken_pipe = true;
			break;
		}
		data += n;
		len -= (size_t)n;
		d->written += (uint64_t)n;
	}
	return true;
}

static int
mda_wait(struct deliverer *d)
{
	int st = 0;
	if (d->fd >= 0)
		close(d->fd);
	d->fd = -1;
	if (d->child_pid <= 0)
		return -1;
	while (waitpid(d->child_pid, &st, 0) < 0) {
		if (errno != EINTR) {
			st = -1;
			break;
		}
	}
	d->child_pid = 0;
	return st;
}

static bool
mda_commit(struct deliverer *d, struct fetch_error *err)
{
	int st = mda_wait(d);
	if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && !d->broken_pipe)
		return true;
	if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return fetch_error_set(err, EX_IOERR,
		    "mda command exited 0 without reading the whole message; not counted as "
		    "delivered");
	if (st != -1 && WIFEXITED(st))
		return fetch_error_set(err, WEXITSTATUS(st) == EX_TEMPFAIL ? EX_TEMPFAIL : EX_IOERR,
		    "mda command failed with exit status %d; message left on the server",
		    WEXITSTATUS(st));
	if (st != -1 && WIFSIGNALED(st))
		return fetch_error_set(err, EX_IOERR,
		    "mda command killed by signal %d; message left on the server", WTERMSIG(st));
	return fetch_error_set(err, EX_IOERR, "mda command could not be waited for");
}

static void
mda_abort(struct deliverer *d)
{
	if (d->child_pid > 0) {
		/* close stdin first: a well-behaved MDA sees a truncated
		 * message; kill it so it cannot deliver half a message */
		kill(d->child_pid, SIGTERM);
		mda_wait(d);
	}
}

static void
mda_close(struct deliverer *d)
{
	mda_abort(d);
}

const struct deliver_ops deliver_mda_ops = {
	"mda", mda_begin, mda_write, mda_commit, mda_abort, mda_close,
	NULL, NULL,
};
