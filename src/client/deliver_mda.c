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

struct mda {
	struct deliverer base;
	int fd;                    /* the command's stdin, or -1 */
	int child_pid;             /* the command, or 0 */
	bool broken_pipe;          /* it stopped reading before the end */
};

static bool
mda_begin(struct deliverer *d, const struct deliver_message *m, struct fetch_error *err)
{
	struct mda *mda = DELIVER_STATE(d, struct mda);
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
		setenv("POPBOX_ACCOUNT", mda->base.account_name, 1);
		setenv("POPBOX_MSGNUM", num, 1);
		if (m->uidl != NULL)
			setenv("POPBOX_UIDL", m->uidl, 1);
		signal(SIGPIPE, SIG_DFL);
		execl("/bin/sh", "sh", "-c", mda->base.target, (char *)NULL);
		_exit(127);
	}
	close(p[0]);
	mda->fd = p[1];
	mda->child_pid = pid;
	mda->broken_pipe = false;
	return true;
}

static bool
mda_write(struct deliverer *d, const char *data, size_t len, struct fetch_error *err)
{
	struct mda *mda = DELIVER_STATE(d, struct mda);
	/* the command stopped reading: its exit status decides, but a short
	 * read is never counted as delivered */
	if (!mda->broken_pipe && !deliver_write_all(mda->fd, data, len, NULL))
		mda->broken_pipe = true;
	return true;
}

static int
mda_wait(struct mda *mda)
{
	int st = 0;
	if (mda->fd >= 0)
		close(mda->fd);
	mda->fd = -1;
	if (mda->child_pid <= 0)
		return -1;
	while (waitpid(mda->child_pid, &st, 0) < 0) {
		if (errno != EINTR) {
			st = -1;
			break;
		}
	}
	mda->child_pid = 0;
	return st;
}

static bool
mda_commit(struct deliverer *d, struct fetch_error *err)
{
	struct mda *mda = DELIVER_STATE(d, struct mda);
	int st = mda_wait(mda);
	if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && !mda->broken_pipe)
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
	struct mda *mda = DELIVER_STATE(d, struct mda);
	if (mda->child_pid > 0) {
		/* close stdin first: a well-behaved MDA sees a truncated
		 * message; kill it so it cannot deliver half a message */
		kill(mda->child_pid, SIGTERM);
		mda_wait(mda);
	}
}

static struct deliverer *
mda_create(void)
{
	struct mda *mda = xcalloc(1, sizeof(*mda));
	mda->fd = -1;
	return &mda->base;
}

static void
mda_destroy(struct deliverer *d)
{
	mda_abort(d);
	free(DELIVER_STATE(d, struct mda));
}

const struct deliver_ops deliver_mda_ops = {
	.name = "mda",
	.create = mda_create,
	.destroy = mda_destroy,
	.begin = mda_begin,
	.write = mda_write,
	.commit = mda_commit,
	.abort = mda_abort,
	.refusal_per_message = true,
};
