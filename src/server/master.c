/* The master process: binds the listeners, forks the auth process and the
 * workers, restarts a child that dies (with back-off), forwards reloads and
 * stops everything on SIGTERM. It never reads a byte from the network and never
 * reads a password, so it is the only part that may keep root. */
#include "server/limits_popboxd.h"
#include "server/master.h"
#include "server/passwd.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/rand.h>

#include "common/base64.h"
#include "common/log.h"
#include "server/auth_sasl.h"
#include "server/ipc.h"
#include "server/popboxd.h"
#include "server/recipient.h"
#include "server/store.h"
#include "server/store_deliver.h"
#include "server/tls.h"
#include "server/iplimit.h"
#include "server/service.h"
#include "server/metrics.h"

/* Listen backlog: bursts of connects queue in the kernel, not in us. The
 * kernel caps it at net.core.somaxconn (4096 since Linux 5.4). With 1,024
 * clients reconnecting at once, the kernel counted thousands of listen
 * overflows against a backlog of 1,024, and each dropped SYN costs its
 * client a 1 s retransmit (bench/README.md, scale curve). */
#define MASTER_LISTEN_BACKLOG 65535
/* Restart back-off for a child that died: starts here, doubles while the child
 * keeps dying young, capped so a fixed fault is picked up within half a minute. */
#define MASTER_BACKOFF_MIN_MS 100
#define MASTER_BACKOFF_MAX_MS 30000
/* A child that ran this long was healthy: reset its back-off. */
#define MASTER_HEALTHY_SECONDS 10
/* Under systemd ($NOTIFY_SOCKET), how often the master looks whether the
 * STATUS= line (connections, children) changed; it is sent only then. */
#define MASTER_STATUS_INTERVAL_MS 1000
/* On SIGTERM, how long children get before SIGKILL. */
#define MASTER_STOP_GRACE_SECONDS 5
/* The auth process is pinged this often over its control channel; one that
 * has not answered a ping for MASTER_PING_TIMEOUT_SECONDS (stopped, hung) is
 * killed and restarted. Until its first answer (it loads the users file
 * before it serves, seconds for a big one) it has
 * MASTER_AUTH_START_SECONDS. */
#define MASTER_PING_INTERVAL_SECONDS 5
#define MASTER_PING_TIMEOUT_SECONDS 15
#define MASTER_AUTH_START_SECONDS 120
/* The group that may read /etc/shadow on Debian (users = pam). */
#define MASTER_SHADOW_GROUP "shadow"
/* Per-user session processes: a grant of the auth process waits this long
 * for its worker's handover (the auth answer may be held by the failed-login
 * penalty meanwhile), and at most this many wait. */
#define MASTER_GRANT_SECONDS 300
#define MASTER_GRANTS_MAX 4096
/* LMTP as the recipient: delivery processes running at once, at most
 * (a worker's LMTP sessions have one each at a time); more get 451. */
#define MASTER_DELIVERIES_MAX 128
/* Their bound is lmtp_timeout; this with lmtp_timeout = 0. */
#define MASTER_DELIVERY_SECONDS_DEFAULT 300

/* The auth process's word that a worker may hand a session over to a
 * process of its own (IPC_SESSION_GRANT). */
struct grant {
	char ticket[IPC_TICKET_LEN + 1];
	unsigned slot;
	uint64_t session_id;
	uid_t uid;
	gid_t gid;
	char *user;
	char *location;
	enum uidl_format uidl_format;
	unsigned expire, login_delay;
	time_t expires;             /* monotonic seconds */
	struct grant *next;
};

/* A plain session in a session process: it left its worker, so the master
 * counts it in its own row of the per-address table (iplimit.h) until the
 * process says it ended (or is gone). */
struct session_conn {
	uint64_t id;
	char peer_ip[IPC_MAX_PEER + 1];
	struct session_conn *next;
};

/* A user's session process (session_proc.c): it serves every session of
 * one user (uid, gid, name, mail location) that arrives while it runs. */
struct session_child {
	pid_t pid;
	uid_t uid;
	gid_t gid;
	char *user;
	char *location;
	enum uidl_format uidl_format;
	unsigned expire, login_delay;
	char name[64];              /* user, sanitized, for the log */
	int ctl;                    /* SEQPACKET to it; -1 once it closed its end */
	struct event *ctl_ev;
	bool taking;                /* takes new sessions (not let go) */
	struct event *linger;       /* no session: let it go when this fires */
	unsigned active;            /* its sessions (ADOPT sent, END not yet) */
	struct session_conn *conns; /* its plain sessions (per-address limit) */
	/* Its counters (metrics.h; NULL without metrics) and what of them the
	 * master has added to its own row. */
	struct metrics_row *counters;
	struct metrics_row seen;
	struct session_child *next;
};

enum child_role { ROLE_AUTH, ROLE_WORKER, ROLE_METRICS };

struct child;

/* A delivery process (delivery_proc.c): one recipient of one LMTP
 * transaction, running as that recipient, for a worker's request. */
struct delivery_child {
	pid_t pid;                  /* 0 once reaped */
	int sock;                   /* its result channel; -1 once answered */
	struct event *ev, *timer;
	struct child *worker;       /* who asked */
	pid_t worker_pid;           /* ... in this incarnation */
	uint64_t request_id, session_id;
	bool killed;                /* by the timer */
	char name[64];              /* the user, sanitized, for the log */
	struct delivery_child *next;
};

struct child {
	enum child_role role;
	unsigned slot;
	pid_t pid;              /* 0 = not running */
	int control_master;     /* master's end of the control socketpair */
	int control_child;
	time_t started;
	unsigned backoff_ms;
	struct event *restart_timer;
	/* auth process: liveness (monotonic seconds) */
	uint64_t ping_id;       /* of the ping waiting for its answer */
	time_t ping_sent;       /* when it left; 0 = none waiting */
	bool answered;          /* this incarnation has answered (or said it is ready) */
	time_t forked;
};

static struct {
	struct event_base *base;
	struct config *config;
	struct child_env env;
	struct child children[2 + POPBOXD_MAX_WORKERS];   /* auth, workers, metrics */
	size_t n_children;
	char *pid_path;
	bool stopping;
	bool socket_activated;     /* the listeners came from systemd */
	struct event *events[6];   /* signals, the auth control channel, the ping timer */
	struct event *status_timer;   /* STATUS= for systemd, only with $NOTIFY_SOCKET */
	struct event *fold_timer;     /* metrics of session processes, while any runs */
	struct event *worker_events[POPBOXD_MAX_WORKERS];  /* workers' control channels */
	struct grant *grants;
	unsigned n_grants;
	struct session_child *sessions;
	unsigned n_sessions;       /* session processes running */
	unsigned n_session_conns;  /* sessions they serve */
	gid_t mail_gid;            /* mail_privileged_group, (gid_t)-1 = none */
	struct delivery_child *deliveries;
	unsigned n_deliveries;     /* delivery processes running */
} master;

static void child_start(struct child *c);

static time_t
monotonic_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

/* The uid and gid of user (the value of key): it must exist and not be
 * root. */
static int
resolve_user(const struct config *config, const char *key, const char *user, uid_t *uid,
    gid_t *gid, char **error_r)
{
	struct passwd *pw = getpwnam(user);
	if (pw == NULL) {
		*error_r = xasprintf("%s: %s user '%s' does not exist%s", config->path, key, user,
		    strcmp(key, "auth_user") == 0 ? " (make install creates popbox-auth; "
		    "or set auth_user to an unprivileged user of its own)" : "");
		return -1;
	}
	if (pw->pw_uid == 0) {
		*error_r = xasprintf("%s: %s user '%s' is root; children must not run as root",
		    config->path, key, user);
		return -1;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	return 0;
}

/* run_as for the workers and auth_user for the auth process, into env. */
static int
resolve_users(const struct config *config, struct child_env *env, char **error_r)
{
	if (resolve_user(config, "run_as", config->run_as, &env->uid, &env->gid, error_r) < 0 ||
	    resolve_user(config, "auth_user", config->auth_user, &env->auth_uid, &env->auth_gid,
	    error_r) < 0)
		return -1;
	env->auth_shadow_gid = (gid_t)-1;
	if (config->passdb_pam) {
		/* pam_unix reads /etc/shadow itself when it may (root or group
		 * shadow); its helper unix_chkpwd checks only the caller's own
		 * password. */
		struct group *gr = getgrnam(MASTER_SHADOW_GROUP);
		if (gr == NULL) {
			*error_r = xasprintf("%s: users = pam needs group '%s' for the auth process, "
			    "and it does not exist", config->path, MASTER_SHADOW_GROUP);
			return -1;
		}
		env->auth_shadow_gid = gr->gr_gid;
	}
	return 0;
}

/* popboxd -t: a users-file name with the device separator in it cannot
 * log in as it is while devices are on (the login name is split at the
 * last separator, docs/DESIGN.md "Every device gets every message"). */
static void
master_check_device_names(const struct config *config)
{
	struct passwd_db *db;
	char *error = NULL;
	unsigned shown = 0;
	if (!config->devices || config->passdb_pam)
		return;
	if (passwd_db_load(config->users, &db, &error) < 0) {
		free(error);
		return;
	}
	for (size_t i = 0; i < passwd_db_count(db); i++) {
		const struct passwd_entry *e = passwd_db_entry(db, i);
		if (strchr(e->user, config->device_separator) == NULL)
			continue;
		if (shown++ < 10) {
			char name[64];
			str_sanitize(name, sizeof(name), e->user, strlen(e->user));
			log_warnx("%s: user %s contains the device separator '%c': that name is read as "
			    "a user and a device; set device_separator to another character or "
			    "devices = no", config->users, name, config->device_separator);
		}
	}
	if (shown > 10)
		log_warnx("%s: %u users contain the device separator '%c'", config->users, shown,
		    config->device_separator);
	passwd_db_free(db);
}

int
master_check(const struct config *config, char **error_r)
{
	struct child_env env;
	if (geteuid() == 0 && resolve_users(config, &env, error_r) < 0)
		return -1;
	if (access(config->users, R_OK) < 0) {
		*error_r = xasprintf("%s: users file %s: %s", config->path, config->users, strerror(errno));
		return -1;
	}
	master_check_device_names(config);
	if (config->tls_cert != NULL) {
		char *cert, *key;
		if (tls_read_pem(config, &cert, &key, error_r) < 0)
			return -1;
		SSL_CTX *ctx = tls_server_ctx_new(cert, key, config->tls_min_version, error_r);
		free(cert);
		free_secret(key);
		if (ctx == NULL)
			return -1;
		SSL_CTX_free(ctx);
	}
	return 0;
}

static int
listener_bind(const struct config_listen *cl, struct listener *out, char **error_r)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICHOST };
	struct addrinfo *res;
	const char *host = cl->host;
	int r, fd, one = 1;

	if (strcmp(host, "*") == 0) {
		host = NULL;
		hints.ai_family = AF_INET;
	}
	r = getaddrinfo(host, cl->port, &hints, &res);
	if (r != 0) {
		*error_r = xasprintf("listen %s:%s: %s", cl->host, cl->port, gai_strerror(r));
		return -1;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*error_r = xasprintf("listen %s:%s: socket: %s", cl->host, cl->port, strerror(errno));
		freeaddrinfo(res);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (res->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, MASTER_LISTEN_BACKLOG) < 0) {
		*error_r = xasprintf("listen %s:%s: %s", cl->host, cl->port, strerror(errno));
		close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	out->fd = fd;
	out->tls = cl->tls;
	out->name = service_listen_name(cl);
	return 0;
}

/* listen_lmtp = unix:PATH. A socket file left by a popboxd that is gone
 * is replaced; one that answers belongs to a running server and is left
 * alone; anything else at PATH is an error. Mode and owner are set before
 * listen(), so no MTA can connect before they are right. */
static int
lmtp_unix_bind(const struct config *config, const char *path, struct listener *out,
    char **error_r)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		*error_r = xasprintf("listen_lmtp unix:%s: path too long", path);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			*error_r = xasprintf("listen_lmtp unix:%s: exists and is not a socket", path);
			return -1;
		}
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
			close(probe);
			*error_r = xasprintf("listen_lmtp unix:%s: another server listens there", path);
			return -1;
		}
		if (probe >= 0)
			close(probe);
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*error_r = xasprintf("listen_lmtp unix:%s: socket: %s", path, strerror(errno));
		return -1;
	}
	mode_t old = umask(0177);
	int r = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (r < 0) {
		*error_r = xasprintf("listen_lmtp unix:%s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	if (getuid() == 0 || geteuid() == 0) {
		const char *owner = config->lmtp_socket_owner != NULL ? config->lmtp_socket_owner :
		    config->run_as;
		char *user = xstrdup(owner), *group = strchr(user, ':');
		struct passwd *pw;
		struct group *gr = NULL;
		if (group != NULL)
			*group++ = '\0';
		if ((pw = getpwnam(user)) == NULL || (group != NULL && (gr = getgrnam(group)) == NULL)) {
			*error_r = xasprintf("lmtp_socket_owner %s: no such %s", owner,
			    pw == NULL ? "user" : "group");
			free(user);
			goto fail;
		}
		free(user);
		if (chown(path, pw->pw_uid, gr != NULL ? gr->gr_gid : pw->pw_gid) < 0) {
			*error_r = xasprintf("listen_lmtp unix:%s: chown: %s", path, strerror(errno));
			goto fail;
		}
	}
	if (chmod(path, config->lmtp_socket_mode) < 0 || lstat(path, &st) < 0 ||
	    listen(fd, MASTER_LISTEN_BACKLOG) < 0) {
		*error_r = xasprintf("listen_lmtp unix:%s: %s", path, strerror(errno));
		goto fail;
	}
	out->fd = fd;
	out->lmtp = true;
	out->unix_socket = true;
	out->dev = st.st_dev;
	out->ino = st.st_ino;
	out->name = xasprintf("unix:%s", path);
	return 0;
fail:
	close(fd);
	unlink(path);
	return -1;
}

/* Called in every child right after fork (child_start), before any child
 * code runs, so no child role can forget it. */
static void
privileges_drop(const struct child_env *env, enum child_role role)
{
	if (!env->drop_privileges)
		return;
	/* The auth process has a user of its own: a worker (run_as) cannot
	 * signal or trace it (docs/DESIGN.md, "The auth process"). */
	uid_t uid = role == ROLE_AUTH ? env->auth_uid : env->uid;
	gid_t gid = role == ROLE_AUTH ? env->auth_gid : env->gid;
	gid_t groups[2] = { gid, env->auth_shadow_gid };
	size_t n_groups = role == ROLE_AUTH && env->auth_shadow_gid != (gid_t)-1 ? 2 : 1;
	if (setgroups(n_groups, groups) < 0 || setresgid(gid, gid, gid) < 0 ||
	    setresuid(uid, uid, uid) < 0)
		fatal("cannot drop privileges to uid %u", (unsigned)uid);
	if (setuid(0) == 0 || geteuid() == 0)
		fatalx("privileges were not dropped");
	/* Dropping ids clears the dumpable flag; keep it off so no one attaches. */
}

/* Password hashes should be out of reach of a compromised worker: warn when
 * the run_as user could open the users file itself. */
static void
users_file_check(const struct config *config)
{
	struct stat st;
	if (!master.env.drop_privileges || config->passdb_pam || stat(config->users, &st) < 0)
		return;
	bool readable = (st.st_uid == master.env.uid && (st.st_mode & S_IRUSR)) ||
	    (st.st_gid == master.env.gid && (st.st_mode & S_IRGRP)) || (st.st_mode & S_IROTH);
	if (readable)
		log_warnx("users file %s can be read by run_as user %s; make it owned by root with "
		    "mode 0600 (popboxd opens it as root for the auth process)", config->users,
		    config->run_as);
}

static unsigned
workers_wanted(const struct config *config)
{
	long n = config->workers ? (long)config->workers : sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > POPBOXD_MAX_WORKERS)
		n = POPBOXD_MAX_WORKERS;
	return (unsigned)n;
}

static void
child_restart_cb(evutil_socket_t fd, short what, void *arg)
{
	struct child *c = arg;
	if (!master.stopping)
		child_start(c);
}

/* Open the users file for the auth process (as root when started as root),
 * so the file can be readable by root alone and no process running as
 * run_as can open it by name. Returns the descriptor, or -1 with errno. */
static int
users_file_open(void)
{
	return open(master.config->users, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
}

/* The key of the SCRAM salts of users without a stored secret
 * (auth_sasl.h): AUTH_SASL_KEY_SIZE random octets in state_dir, made by the
 * master at the first start, mode 0600, owned by the master's user, read
 * by no one else: the auth process gets it as a descriptor, like the users
 * file. The state directory may be writable by the run_as user, so the
 * file is never followed through a link and one with the wrong owner, mode,
 * type or size is not used (at start-up it is replaced). */
#define MASTER_SALT_KEY_FILE "scram-salt.key"

static bool
salt_key_usable(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
	    (st.st_mode & 077) == 0 && st.st_size == AUTH_SASL_KEY_SIZE;
}

/* An open, usable key file, or -1 (logged). */
static int
salt_key_open(void)
{
	int dfd = open(master.config->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int fd = dfd < 0 ? -1 : openat(dfd, MASTER_SALT_KEY_FILE,
	    O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (fd >= 0 && !salt_key_usable(fd)) {
		close(fd);
		fd = -1;
		errno = EPERM;
	}
	if (fd < 0)
		log_warn("%s/%s: not usable; SCRAM salts of users without a SCRAM secret "
		    "change at each start of the auth process", master.config->state_dir,
		    MASTER_SALT_KEY_FILE);
	if (dfd >= 0)
		close(dfd);
	return fd;
}

/* At start-up: make the key file unless a usable one is there. Failure is
 * logged, not fatal (salt_key_open says what follows). */
static void
salt_key_prepare(const struct config *config)
{
	unsigned char key[AUTH_SASL_KEY_SIZE];
	int dfd = open(config->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return;
	int fd = openat(dfd, MASTER_SALT_KEY_FILE, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK |
	    O_CLOEXEC);
	if (fd >= 0 && salt_key_usable(fd)) {
		close(fd);
		close(dfd);
		return;
	}
	if (fd >= 0 || errno != ENOENT) {
		log_warnx("%s/%s: wrong owner, mode, type or size; making a new one",
		    config->state_dir, MASTER_SALT_KEY_FILE);
		if (fd >= 0)
			close(fd);
		(void)unlinkat(dfd, MASTER_SALT_KEY_FILE, 0);
	}
	fd = openat(dfd, MASTER_SALT_KEY_FILE, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	    0600);
	if (fd < 0 || RAND_bytes(key, sizeof(key)) != 1 ||
	    write(fd, key, sizeof(key)) != (ssize_t)sizeof(key) || fsync(fd) < 0) {
		log_warn("cannot write %s/%s", config->state_dir, MASTER_SALT_KEY_FILE);
		if (fd >= 0)
			(void)unlinkat(dfd, MASTER_SALT_KEY_FILE, 0);
	}
	secure_wipe(key, sizeof(key));
	if (fd >= 0)
		close(fd);
	close(dfd);
}

static void grants_free(void);
static void session_child_free(struct session_child *sc);
static void deliveries_forget(void);
static bool delivery_reaped(pid_t pid, int status);
static void mail_group_resolve(const struct config *config);

/* In a child right after fork: give it a clean slate. The master's loop and
 * its signal handlers must not fire here. reinit first (while every fd is
 * still open) so that deleting and freeing touch only the child's own epoll
 * instance, never the one shared with the master. Every control end is
 * closed but own's (NULL: all of them, a session process). */
static void
child_forked(struct child *own)
{
	event_reinit(master.base);
	for (size_t i = 0; i < N_ELEMENTS(master.events); i++)
		if (master.events[i] != NULL)
			event_free(master.events[i]);
	for (size_t i = 0; i < N_ELEMENTS(master.worker_events); i++)
		if (master.worker_events[i] != NULL)
			event_free(master.worker_events[i]);
	for (size_t i = 0; i < master.n_children; i++)
		event_free(master.children[i].restart_timer);
	if (master.status_timer != NULL)
		event_free(master.status_timer);
	master.status_timer = NULL;
	if (master.fold_timer != NULL)
		event_free(master.fold_timer);
	master.fold_timer = NULL;
	/* The channels to the users' session processes and their counters:
	 * none may reach another user's process. */
	while (master.sessions != NULL) {
		struct session_child *sc = master.sessions;
		master.sessions = sc->next;
		session_child_free(sc);
	}
	/* ... and the other deliveries' result channels (their events
	 * belong to the base) */
	deliveries_forget();
	event_base_free(master.base);
	master.base = NULL;
	for (size_t i = 0; i < master.n_children; i++) {
		close(master.children[i].control_master);
		if (&master.children[i] != own)
			close(master.children[i].control_child);
	}
	/* Other sessions' tickets, users and mail locations. */
	grants_free();
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_IGN);   /* reloads come over the control channel */
	signal(SIGINT, SIG_IGN);   /* the master stops us on Ctrl-C */
}

static void
child_start(struct child *c)
{
	/* The auth process loads the users file before it serves. */
	int users_fd = c->role == ROLE_AUTH && !master.config->passdb_pam ? users_file_open() : -1;
	int users_errno = errno;
	int salt_key_fd = c->role == ROLE_AUTH ? salt_key_open() : -1;
	pid_t pid = fork();
	if (pid != 0 && users_fd >= 0)
		close(users_fd);   /* the child has it */
	if (pid != 0 && salt_key_fd >= 0)
		close(salt_key_fd);
	if (pid < 0) {
		log_warn("fork");
		struct timeval tv = { .tv_sec = 1 };
		evtimer_add(c->restart_timer, &tv);
		return;
	}
	if (pid == 0) {
		child_forked(c);
		master.env.control_fd = c->control_child;
		master.env.users_fd = users_fd;
		master.env.users_errno = users_errno;
		master.env.salt_key_fd = salt_key_fd;
		master.env.slot = c->slot;
		master.env.config = master.config;
		signal(SIGCHLD, SIG_DFL);
		signal(SIGPIPE, SIG_IGN);
		privileges_drop(&master.env, c->role);
		metrics_attach(c->role == ROLE_METRICS ? NULL : master.env.metrics,
		    c->role == ROLE_AUTH ? METRICS_ROW_AUTH : (int)c->slot);
		if (c->role == ROLE_AUTH)
			auth_main(&master.env);
		if (c->role == ROLE_METRICS)
			metrics_main(&master.env);
		worker_main(&master.env);
	}
	c->pid = pid;
	c->started = time(NULL);
	c->forked = monotonic_seconds();
	c->ping_sent = 0;
	c->answered = false;
	log_debug("started %s %u as pid %d", c->role == ROLE_AUTH ? "auth" :
	    c->role == ROLE_METRICS ? "metrics" : "worker", c->slot, (int)pid);
}

static void
child_reaped(pid_t pid, int status)
{
	for (size_t i = 0; i < master.n_children; i++) {
		struct child *c = &master.children[i];
		if (c->pid != pid)
			continue;
		c->pid = 0;
		if (master.stopping)
			return;
		const char *what = c->role == ROLE_AUTH ? "auth process" :
		    c->role == ROLE_METRICS ? "metrics process" : "worker";
		METRICS_INC(restarts[c->role == ROLE_AUTH ? METRICS_ROLE_AUTH :
		    c->role == ROLE_METRICS ? METRICS_ROLE_METRICS : METRICS_ROLE_WORKER]);
		if (WIFSIGNALED(status))
			log_warnx("%s %u (pid %d) killed by signal %d; restarting", what, c->slot,
			    (int)pid, WTERMSIG(status));
		else
			log_warnx("%s %u (pid %d) exited with status %d; restarting", what, c->slot,
			    (int)pid, WEXITSTATUS(status));
		if (time(NULL) - c->started >= MASTER_HEALTHY_SECONDS)
			c->backoff_ms = MASTER_BACKOFF_MIN_MS;
		struct timeval tv = { .tv_sec = c->backoff_ms / 1000,
		    .tv_usec = (c->backoff_ms % 1000) * 1000 };
		evtimer_add(c->restart_timer, &tv);
		c->backoff_ms *= 2;
		if (c->backoff_ms > MASTER_BACKOFF_MAX_MS)
			c->backoff_ms = MASTER_BACKOFF_MAX_MS;
		return;
	}
}

/* Stop routing logins to sc and shut our side of its channel: it reads
 * the end, takes nothing new and exits with its last session (at once when
 * it has none). Its IPC_SESSION_ENDs still arrive meanwhile. */
static void
session_child_let_go(struct session_child *sc)
{
	if (!sc->taking)
		return;
	sc->taking = false;
	evtimer_del(sc->linger);
	if (sc->ctl >= 0)
		shutdown(sc->ctl, SHUT_WR);
}

/* Also in a child after its fork (child_forked): no accounting here. */
static void
session_child_free(struct session_child *sc)
{
	if (sc->ctl_ev != NULL)
		event_free(sc->ctl_ev);
	if (sc->linger != NULL)
		event_free(sc->linger);
	if (sc->ctl >= 0)
		close(sc->ctl);
	while (sc->conns != NULL) {
		struct session_conn *c = sc->conns;
		sc->conns = c->next;
		free(c);
	}
	metrics_block_free(sc->counters);
	free(sc->user);
	free(sc->location);
	free(sc);
}

/* The plain session id of sc ended: it no longer counts for its address. */
static void
session_conn_end(struct session_child *sc, uint64_t id)
{
	for (struct session_conn **pp = &sc->conns; *pp != NULL; pp = &(*pp)->next) {
		struct session_conn *c = *pp;
		if (c->id != id)
			continue;
		*pp = c->next;
		iplimit_add(master.env.iplimit, IPLIMIT_MASTER, c->peer_ip, -1);
		iplimit_total_add(master.env.iplimit, IPLIMIT_MASTER, -1);
		free(c);
		return;
	}
}

/* A session process ended: it is not restarted (the user's next login
 * starts a new one). */
static bool
session_reaped(pid_t pid, int status)
{
	for (struct session_child **pp = &master.sessions; *pp != NULL; pp = &(*pp)->next) {
		struct session_child *sc = *pp;
		if (sc->pid != pid)
			continue;
		if (WIFSIGNALED(status))
			log_warnx("session process of user %s (pid %d) killed by signal %d; %u "
			    "session(s) ended with it", sc->name, (int)pid, WTERMSIG(status), sc->active);
		else if (WEXITSTATUS(status) != 0)
			log_warnx("session process of user %s (pid %d) exited with status %d", sc->name,
			    (int)pid, WEXITSTATUS(status));
		*pp = sc->next;
		master.n_sessions--;
		master.n_session_conns -= sc->active;
		/* What it counted to the end; its sessions are gone with it. */
		metrics_block_fold(sc->counters, &sc->seen, sc->active);
		metrics_block_gone(&sc->seen);
		while (sc->conns != NULL)
			session_conn_end(sc, sc->conns->id);
		session_child_free(sc);
		return true;
	}
	return false;
}

static void
sigchld_cb(evutil_socket_t sig, short what, void *arg)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		if (!session_reaped(pid, status) && !delivery_reaped(pid, status))
			child_reaped(pid, status);
}

/* The STATUS= line systemd shows: open connections (all workers, from the
 * shared counters) and the children running. */
static char *
master_status_text(void)
{
	unsigned running = 0;
	for (size_t i = 0; i < master.n_children; i++)
		running += master.children[i].pid > 0;
	unsigned conns = master.env.iplimit != NULL ? iplimit_total(master.env.iplimit) : 0;
	return xasprintf("%u connections, %u of %zu processes running (%u workers, auth%s), "
	    "%zu listeners", conns, running, master.n_children, master.env.n_workers,
	    master.env.metrics_fd >= 0 ? ", metrics" : "", master.env.n_listeners);
}

static void
status_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	char *text = master_status_text();
	service_notify_status(text);
	free(text);
}

static void
notify_ready(void)
{
	char *text = master_status_text();
	service_notify_ready(text);
	free(text);
}

static void master_reload(void);

static void
sighup_cb(evutil_socket_t sig, short what, void *arg)
{
	service_notify_reloading();
	master_reload();
	notify_ready();
}

static void
master_reload(void)
{
	char *error = NULL, *text = NULL;
	struct config *next;
	/* Read and parsed exactly as at start-up (same reader, same limit). */
	if (config_load_text(master.config->path, &next, &text, &error) < 0) {
		log_warnx("reload failed, keeping the running configuration: %s", error);
		free(error);
		return;
	}
	/* What needs new sockets or processes cannot change in place. */
	bool same_listen = next->n_listens == master.config->n_listens;
	for (size_t i = 0; same_listen && i < next->n_listens; i++)
		same_listen = strcmp(next->listens[i].host, master.config->listens[i].host) == 0 &&
		    strcmp(next->listens[i].port, master.config->listens[i].port) == 0 &&
		    next->listens[i].tls == master.config->listens[i].tls;
	if (!same_listen)
		log_warnx("reload: listen addresses changed; restart popboxd to apply them");
	bool same_lmtp = next->n_lmtp_listens == master.config->n_lmtp_listens &&
	    next->n_lmtp_unix == master.config->n_lmtp_unix;
	for (size_t i = 0; same_lmtp && i < next->n_lmtp_listens; i++)
		same_lmtp = strcmp(next->lmtp_listens[i].host, master.config->lmtp_listens[i].host) == 0 &&
		    strcmp(next->lmtp_listens[i].port, master.config->lmtp_listens[i].port) == 0;
	for (size_t i = 0; same_lmtp && i < next->n_lmtp_unix; i++)
		same_lmtp = strcmp(next->lmtp_unix[i], master.config->lmtp_unix[i]) == 0;
	if (!same_lmtp)
		log_warnx("reload: listen_lmtp changed; restart popboxd to apply it");
	if (strcmp(next->run_as, master.config->run_as) != 0 ||
	    strcmp(next->auth_user, master.config->auth_user) != 0 ||
	    workers_wanted(next) != master.env.n_workers ||
	    next->passdb_pam != master.config->passdb_pam)
		log_warnx("reload: run_as, auth_user, workers and users = pam changes need a restart "
		    "of popboxd");
	/* TLS: a certificate or key that does not load keeps the old one. */
	char *cert = NULL, *key = NULL;
	if (next->tls_cert != NULL) {
		SSL_CTX *ctx = NULL;
		if (tls_read_pem(next, &cert, &key, &error) == 0)
			ctx = tls_server_ctx_new(cert, key, next->tls_min_version, &error);
		if (ctx == NULL) {
			log_warnx("reload: keeping the current TLS certificate: %s", error);
			free(error);
			free(cert);
			free_secret(key);
			cert = key = NULL;
		} else {
			/* Children forked from now on inherit the new context. */
			SSL_CTX_free(master.env.ssl_ctx);
			master.env.ssl_ctx = ctx;
		}
	}
	config_free(master.config);
	master.config = next;
	master.env.config = next;
	mail_group_resolve(next);
	/* A session process runs with the settings of its fork (its uid, its
	 * groups, the config it parsed): it takes no new sessions from now
	 * on and ends with its open ones, so the user's next login starts
	 * one with the new settings (docs/DESIGN.md "A process per user
	 * session", Reload). */
	unsigned let_go = 0, n_open = 0;
	for (struct session_child *sc = master.sessions; sc != NULL; sc = sc->next) {
		if (!sc->taking)
			continue;
		let_go++;
		n_open += sc->active;
		session_child_let_go(sc);
	}
	if (let_go > 0)
		log_info("reload: %u session process(es) take no new logins and end with their %u "
		    "open session(s); the next logins get new ones", let_go, n_open);
	/* The certificate and key go to the workers only: the auth process
	 * never serves TLS, and a process that verifies passwords should not
	 * hold the private key too (docs/DESIGN.md, "The auth process"). */
	const struct ipc_reload msg = { .path = next->path, .config = text, .cert_pem = cert,
	    .key_pem = key };
	const struct ipc_reload auth_msg = { .path = next->path, .config = text, .cert_pem = "",
	    .key_pem = "" };
	unsigned char *buf = xmalloc(IPC_MAX_MSG);
	size_t len = ipc_reload_encode(buf, IPC_MAX_MSG, &msg);
	unsigned char *auth_buf = xmalloc(IPC_MAX_MSG);
	size_t auth_len = ipc_reload_encode(auth_buf, IPC_MAX_MSG, &auth_msg);
	for (size_t i = 0; i < master.n_children; i++) {
		struct child *c = &master.children[i];
		bool auth = c->role == ROLE_AUTH;
		if (c->pid != 0 && ipc_send(c->control_master, auth ? auth_buf : buf,
		    auth ? auth_len : len) < 0)
			log_warn("reload: cannot notify child %d", (int)c->pid);
	}
	secure_wipe(buf, len);   /* it holds the private key */
	free(buf);
	free(auth_buf);
	free(cert);
	free_secret(key);
	free(text);
	log_info("configuration reloaded");
}

/* Ping the auth process; kill one that has not answered in time (the
 * SIGCHLD that follows restarts it as any dead child). A stopped or hung
 * auth process would otherwise hold every login until it is noticed by
 * hand. */
static void
auth_ping_cb(evutil_socket_t fd, short what, void *arg)
{
	struct child *c = &master.children[0];
	time_t now = monotonic_seconds();
	if (c->pid <= 0 || master.stopping)
		return;
	if (c->ping_sent != 0 || !c->answered) {
		time_t since = c->answered ? c->ping_sent : c->forked;
		time_t limit = c->answered ? MASTER_PING_TIMEOUT_SECONDS : MASTER_AUTH_START_SECONDS;
		if (now - since >= limit) {
			log_warnx("auth process (pid %d) has not answered for %lld s; killing it",
			    (int)c->pid, (long long)(now - since));
			kill(c->pid, SIGKILL);
			c->ping_sent = 0;
			c->answered = true;   /* no second kill before the restart */
			c->forked = now;
			return;
		}
		if (c->ping_sent != 0)
			return;   /* one ping at a time */
	}
	unsigned char buf[IPC_HEADER_SIZE];
	const struct ipc_ping ping = { .request_id = ++c->ping_id };
	size_t len = ipc_ping_encode(buf, sizeof(buf), &ping);
	if (ipc_send(c->control_master, buf, len) < 0 && errno != EAGAIN)
		log_warn("cannot ping the auth process");
	c->ping_sent = now;
}

static void
auth_pong(const struct ipc_ping *pong)
{
	struct child *c = &master.children[0];
	if (pong->request_id == 0 || pong->request_id == c->ping_id) {
		c->answered = true;
		if (pong->request_id != 0)
			c->ping_sent = 0;
	}
}

/* --- per-user session processes (docs/DESIGN.md "A process per user
 * session") --------------------------------------------------------------- */

static void
grant_free(struct grant *g)
{
	secure_wipe(g->ticket, sizeof(g->ticket));
	free(g->user);
	free(g->location);
	free(g);
}

static void
grants_free(void)
{
	while (master.grants != NULL) {
		struct grant *g = master.grants;
		master.grants = g->next;
		grant_free(g);
	}
	master.n_grants = 0;
}

/* Drop the grants whose handover never came (the session ended first). */
static void
grants_expire(void)
{
	time_t now = monotonic_seconds();
	for (struct grant **pp = &master.grants; *pp != NULL;) {
		struct grant *g = *pp;
		if (g->expires > now) {
			pp = &g->next;
			continue;
		}
		*pp = g->next;
		grant_free(g);
		master.n_grants--;
	}
}

static void
grant_add(const struct ipc_session_grant *m)
{
	grants_expire();
	if (master.n_grants >= MASTER_GRANTS_MAX) {
		log_warnx("session %016llx: %u session grants waiting for their workers; refused",
		    (unsigned long long)m->session_id, master.n_grants);
		return;   /* the handover fails: [SYS/TEMP] */
	}
	struct grant *g = xcalloc(1, sizeof(*g));
	snprintf(g->ticket, sizeof(g->ticket), "%s", m->ticket);
	g->slot = m->slot;
	g->session_id = m->session_id;
	g->uid = (uid_t)m->uid;
	g->gid = (gid_t)m->gid;
	g->user = xstrdup(m->user);
	g->location = xstrdup(m->location);
	g->uidl_format = m->uidl_format;
	g->expire = m->expire;
	g->login_delay = m->login_delay;
	g->expires = monotonic_seconds() + MASTER_GRANT_SECONDS;
	g->next = master.grants;
	master.grants = g;
	master.n_grants++;
}

/* The grant of the session a worker hands over, taken off the list; NULL
 * when the auth process granted no such thing to that worker. */
static struct grant *
grant_take(unsigned slot, uint64_t session_id, const char *ticket)
{
	if (strlen(ticket) != IPC_TICKET_LEN)
		return NULL;
	for (struct grant **pp = &master.grants; *pp != NULL; pp = &(*pp)->next) {
		struct grant *g = *pp;
		if (g->slot == slot && g->session_id == session_id &&
		    const_time_eq(g->ticket, ticket, IPC_TICKET_LEN)) {
			*pp = g->next;
			master.n_grants--;
			return g;
		}
	}
	return NULL;
}

static void auth_control_cb(evutil_socket_t fd, short what, void *arg);

/* The auth process sends a grant before the answer that lets the worker
 * hand over, but on another socket: read what it has sent so far. */
static void
auth_control_drain(void)
{
	int fd = master.children[0].control_master;
	for (int i = 0; i < 64; i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
			return;
		auth_control_cb(fd, EV_READ, NULL);
	}
}

/* In a process forked to run as a user (a session or delivery process),
 * before it becomes the user: nothing of the master's that another user's
 * mail, the network or the shared tables depend on stays open. */
static void
user_child_forked(void)
{
	child_forked(NULL);
	for (size_t i = 0; i < master.env.n_listeners; i++)
		close(master.env.listeners[i].fd);
	for (unsigned i = 0; i < master.env.n_workers; i++) {
		close(master.env.auth_fds[i]);
		close(master.env.worker_fds[i]);
	}
	iplimit_detach(master.env.iplimit);
	master.env.iplimit = NULL;
	/* Never the shared counters (a session process gets a row of its
	 * own: session_child_fork). */
	metrics_detach(master.env.metrics);
	master.env.metrics = NULL;
	if (master.env.metrics_fd >= 0)
		close(master.env.metrics_fd);
	signal(SIGCHLD, SIG_DFL);
	signal(SIGPIPE, SIG_IGN);
}

/* Become the user: uid, gid, and the mail group where the store needs it
 * (dot-locks in /var/mail); no other supplementary group. */
static void
session_privileges_drop(uid_t uid, gid_t gid, gid_t mail_gid)
{
	if (!master.env.drop_privileges)
		return;
	gid_t groups[2] = { gid, mail_gid };
	size_t n_groups = mail_gid != (gid_t)-1 && mail_gid != gid ? 2 : 1;
	if (setgroups(n_groups, groups) < 0 || setresgid(gid, gid, gid) < 0 ||
	    setresuid(uid, uid, uid) < 0)
		fatal("cannot become uid %u", (unsigned)uid);
	if (setuid(0) == 0 || geteuid() == 0 || getuid() != uid)
		fatalx("privileges were not dropped");
	/* The user must not trace or read this process, forked from root's
	 * (its heap had the master's secrets until they were freed): not
	 * dumpable, whatever fs.suid_dumpable says. */
	if (prctl(PR_SET_DUMPABLE, 0) < 0)
		fatal("prctl(PR_SET_DUMPABLE)");
}

static void
session_linger_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session_child *sc = arg;
	if (sc->active == 0)
		session_child_let_go(sc);
}

/* A session ended in sc (IPC_SESSION_END), or sc went away. */
static void
session_ctl_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session_child *sc = arg;
	unsigned char buf[IPC_HEADER_SIZE + 8];
	struct ipc_session_end m;
	int passed;
	ssize_t n = ipc_recv_fd(fd, buf, sizeof(buf), &passed);
	if (passed >= 0)
		close(passed);
	if (n == 0) {
		/* It closed its end (it exited or died; SIGCHLD says more). */
		session_child_let_go(sc);
		event_free(sc->ctl_ev);
		sc->ctl_ev = NULL;
		close(sc->ctl);
		sc->ctl = -1;
		return;
	}
	if (n < 0 || !ipc_session_end_decode(buf, (size_t)n, &m) || sc->active == 0)
		return;
	/* The session's counters are final now (session.c counts before it
	 * says so). */
	metrics_block_fold(sc->counters, &sc->seen, sc->active);
	session_conn_end(sc, m.session_id);
	sc->active--;
	master.n_session_conns--;
	if (sc->active > 0 || !sc->taking)
		return;
	if (master.config->session_process_linger == 0) {
		session_child_let_go(sc);
		return;
	}
	struct timeval tv = { .tv_sec = master.config->session_process_linger };
	evtimer_add(sc->linger, &tv);
}

/* Every METRICS_FOLD_SECONDS while a session process runs: what they
 * counted into the table (metrics.h), so that long sessions show too. */
static void
fold_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	for (struct session_child *sc = master.sessions; sc != NULL; sc = sc->next)
		metrics_block_fold(sc->counters, &sc->seen, sc->active);
	if (master.sessions == NULL)
		evtimer_del(master.fold_timer);
}

/* Fork the session process of g's user. conn: the connection the master
 * holds now, which the child must not keep a copy of (it would hold the
 * client's socket open after its session closed it). NULL (logged) when it
 * cannot be. */
static struct session_child *
session_child_fork(const struct grant *g, int conn)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		log_warn("session process: socketpair");
		return NULL;
	}
	bool mbox = strncmp(g->location, "mbox:", 5) == 0;
	/* Its counters: a row of its own, never the shared table. */
	struct metrics_row *counters = NULL;
	if (master.env.metrics != NULL && (counters = metrics_block_new()) == NULL)
		log_warn("session process of a user: no shared memory for its counters; its "
		    "sessions are not counted");
	pid_t pid = fork();
	if (pid < 0) {
		log_warn("session process: fork");
		close(sv[0]);
		close(sv[1]);
		metrics_block_free(counters);
		return NULL;
	}
	if (pid == 0) {
		close(sv[0]);
		close(conn);   /* it comes again with its IPC_SESSION_ADOPT */
		user_child_forked();
		/* It counts into its own row, which the master folds into the
		 * table (metrics.h). */
		metrics_attach_block(counters);
		session_privileges_drop(g->uid, g->gid, mbox ? master.mail_gid : (gid_t)-1);
		static struct session_proc_start st;
		st.ctl = sv[1];
		st.user = xstrdup(g->user);
		st.location = xstrdup(g->location);
		st.uidl_format = g->uidl_format;
		st.expire = g->expire;
		st.login_delay = g->login_delay;
		master.env.config = master.config;
		session_proc_main(&master.env, &st);
	}
	close(sv[1]);
	struct session_child *sc = xcalloc(1, sizeof(*sc));
	sc->pid = pid;
	sc->uid = g->uid;
	sc->gid = g->gid;
	sc->user = xstrdup(g->user);
	sc->location = xstrdup(g->location);
	sc->uidl_format = g->uidl_format;
	sc->expire = g->expire;
	sc->login_delay = g->login_delay;
	str_sanitize(sc->name, sizeof(sc->name), g->user, strlen(g->user));
	sc->ctl = sv[0];
	sc->taking = true;
	sc->counters = counters;
	sc->ctl_ev = event_new(master.base, sc->ctl, EV_READ | EV_PERSIST, session_ctl_cb, sc);
	event_add(sc->ctl_ev, NULL);
	sc->linger = evtimer_new(master.base, session_linger_cb, sc);
	sc->next = master.sessions;
	master.sessions = sc;
	master.n_sessions++;
	if (master.fold_timer != NULL && !evtimer_pending(master.fold_timer, NULL)) {
		struct timeval tv = { .tv_sec = METRICS_FOLD_SECONDS };
		evtimer_add(master.fold_timer, &tv);
	}
	log_debug("session process of user %s is pid %d", sc->name, (int)pid);
	return sc;
}

/* The running session process of g's user, if any takes new sessions. */
static struct session_child *
session_child_find(const struct grant *g)
{
	for (struct session_child *sc = master.sessions; sc != NULL; sc = sc->next)
		if (sc->taking && sc->uid == g->uid && sc->gid == g->gid &&
		    sc->uidl_format == g->uidl_format && sc->expire == g->expire &&
		    sc->login_delay == g->login_delay && strcmp(sc->user, g->user) == 0 &&
		    strcmp(sc->location, g->location) == 0)
			return sc;
	return NULL;
}

/* Hand the session of a handover from worker slot (fd: the connection, or
 * the worker's relay) to its user's session process, started if there is
 * none. False (logged) when it cannot be. */
static bool
session_route(unsigned slot, const struct ipc_handover *h, int fd)
{
	struct grant *g = grant_take(slot, h->session_id, h->ticket);
	if (g == NULL) {
		auth_control_drain();
		g = grant_take(slot, h->session_id, h->ticket);
	}
	if (g == NULL) {
		log_warnx("worker %u: handover of session %016llx without a grant of the auth "
		    "process, refused", slot, (unsigned long long)h->session_id);
		return false;
	}
	char name[64];
	str_sanitize(name, sizeof(name), g->user, strlen(g->user));
	bool ok = false;
	if (master.config->max_connections > 0 &&
	    master.n_session_conns >= master.config->max_connections) {
		log_warnx("session %016llx: %u sessions in session processes (max_connections); "
		    "user %s refused for now", (unsigned long long)h->session_id,
		    master.n_session_conns, name);
		goto out;
	}
	if (master.env.drop_privileges && (g->uid == 0 || g->uid < master.config->first_valid_uid)) {
		log_warnx("session %016llx: user %s has uid %u, below first_valid_uid: no session "
		    "process", (unsigned long long)h->session_id, name, (unsigned)g->uid);
		goto out;
	}
	struct session_child *sc = session_child_find(g);
	if (sc == NULL && (sc = session_child_fork(g, fd)) == NULL)
		goto out;
	/* The input stays base64: the master carries it, never reads it. */
	static unsigned char *buf;
	if (buf == NULL)
		buf = xmalloc(IPC_MAX_MSG);
	const struct ipc_session_adopt m = { .session_id = h->session_id, .flags = h->flags,
	    .mech = h->mech, .peer = h->peer, .peer_ip = h->peer_ip, .device = h->device,
	    .input = h->input };
	size_t len = ipc_session_adopt_encode(buf, IPC_MAX_MSG, &m);
	if (len == 0 || ipc_send_fd(sc->ctl, buf, len, fd) < 0) {
		log_warn("session %016llx: cannot hand the connection to the session process of "
		    "user %s", (unsigned long long)h->session_id, name);
		if (len > 0)
			secure_wipe(buf, len);
		if (sc->active == 0)
			session_child_let_go(sc);   /* no session of its own to wait for */
		goto out;
	}
	secure_wipe(buf, len);
	evtimer_del(sc->linger);
	sc->active++;
	master.n_session_conns++;
	if (!(h->flags & IPC_HANDOVER_TLS)) {
		/* A plain session leaves its worker's count when the worker has
		 * our answer: count it here first, so that it never counts for
		 * nothing in between (a relayed one stays counted in its
		 * worker). */
		struct session_conn *c = xcalloc(1, sizeof(*c));
		c->id = h->session_id;
		snprintf(c->peer_ip, sizeof(c->peer_ip), "%s", h->peer_ip);
		c->next = sc->conns;
		sc->conns = c;
		iplimit_add(master.env.iplimit, IPLIMIT_MASTER, c->peer_ip, 1);
		iplimit_total_add(master.env.iplimit, IPLIMIT_MASTER, 1);
	}
	ok = true;
out:
	grant_free(g);
	return ok;
}

/* --- LMTP as the recipient (docs/DESIGN.md "Delivering as the recipient") */

/* Tell worker w (if it is still the incarnation that asked) how a check or
 * delivery ended. */
static void
delivery_answer(struct child *w, pid_t worker_pid, uint64_t request_id, uint64_t session_id,
    unsigned status, const char *error)
{
	if (w->pid <= 0 || w->pid != worker_pid)
		return;   /* restarted: its sessions are gone, the MTA retries */
	unsigned char buf[IPC_HEADER_SIZE + 2 * 8 + IPC_MAX_ERROR + 1];
	char why[IPC_MAX_ERROR + 1];
	snprintf(why, sizeof(why), "%s", error != NULL ? error : "");
	const struct ipc_lmtp_result m = { .request_id = request_id, .session_id = session_id,
	    .status = status, .error = why };
	size_t len = ipc_lmtp_result_encode(buf, sizeof(buf), &m);
	if (len == 0 || ipc_send(w->control_master, buf, len) < 0)
		log_warn("cannot answer worker %u's delivery request", w->slot);
}

static void
delivery_child_free(struct delivery_child *dc)
{
	if (dc->ev != NULL)
		event_free(dc->ev);
	if (dc->timer != NULL)
		event_free(dc->timer);
	if (dc->sock >= 0)
		close(dc->sock);
	free(dc);
}

/* Free dc once it is answered and reaped. */
static void
delivery_child_settle(struct delivery_child *dc)
{
	if (dc->sock >= 0 || dc->pid > 0)
		return;
	for (struct delivery_child **pp = &master.deliveries; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == dc) {
			*pp = dc->next;
			break;
		}
	}
	delivery_child_free(dc);
}

/* The result is known: to the worker, and the channel closed. */
static void
delivery_child_answer(struct delivery_child *dc, unsigned status, const char *error)
{
	delivery_answer(dc->worker, dc->worker_pid, dc->request_id, dc->session_id, status, error);
	event_free(dc->ev);
	event_free(dc->timer);
	dc->ev = dc->timer = NULL;
	close(dc->sock);
	dc->sock = -1;
	delivery_child_settle(dc);
}

/* In a forked child (child_forked) and at the end: drop every delivery's
 * record without a word to anyone. */
static void
deliveries_forget(void)
{
	while (master.deliveries != NULL) {
		struct delivery_child *dc = master.deliveries;
		master.deliveries = dc->next;
		delivery_child_free(dc);
	}
	master.n_deliveries = 0;
}

static void
delivery_sock_cb(evutil_socket_t fd, short what, void *arg)
{
	struct delivery_child *dc = arg;
	unsigned char buf[IPC_HEADER_SIZE + 2 * 8 + IPC_MAX_ERROR + 1];
	struct ipc_lmtp_result r;
	int passed;
	ssize_t n = ipc_recv_fd(fd, buf, sizeof(buf), &passed);
	if (passed >= 0)
		close(passed);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0 && ipc_lmtp_result_decode(buf, (size_t)n, &r) &&
	    r.request_id == dc->request_id) {
		/* the recipient's own process speaks for its own delivery only:
		 * whether an account may get mail is the master's to say */
		delivery_child_answer(dc, r.status == IPC_LMTP_NO_USER ? DELIVERY_TEMP : r.status,
		    r.error);
		return;
	}
	log_warnx("delivery process of user %s (pid %d) ended without a result", dc->name,
	    (int)dc->pid);
	delivery_child_answer(dc, DELIVERY_TEMP, "the delivery process ended without a result");
}

/* lmtp_timeout passed: the delivery hangs (a dead NFS server, a lock held
 * past lock_wait); the recipient gets 451 and the MTA retries. */
static void
delivery_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct delivery_child *dc = arg;
	log_warnx("delivery as user %s (pid %d) still runs after %u s: killed", dc->name,
	    (int)dc->pid, master.config->lmtp_timeout);
	if (dc->pid > 0)
		kill(dc->pid, SIGKILL);
	dc->killed = true;
	char why[96];
	snprintf(why, sizeof(why), "delivery process killed after %u s", master.config->lmtp_timeout);
	delivery_child_answer(dc, DELIVERY_TEMP, why);
}

static bool
delivery_reaped(pid_t pid, int status)
{
	for (struct delivery_child *dc = master.deliveries; dc != NULL; dc = dc->next) {
		if (dc->pid != pid)
			continue;
		if (!dc->killed && WIFSIGNALED(status))
			log_warnx("delivery process of user %s (pid %d) killed by signal %d", dc->name,
			    (int)pid, WTERMSIG(status));
		else if (!dc->killed && WEXITSTATUS(status) != 0)
			log_warnx("delivery process of user %s (pid %d) exited with status %d", dc->name,
			    (int)pid, WEXITSTATUS(status));
		dc->pid = 0;
		master.n_deliveries--;
		/* its result, or the end of the channel, is still to be read */
		delivery_child_settle(dc);
		return true;
	}
	return false;
}

/* A worker's check or delivery as the recipient (IPC_LMTP_DELIVER; fd: the
 * spool of a delivery). The worker names the user; who that is (uid, gid,
 * home, maildrop) and whether the account may get mail the master looks
 * up itself, as popbox deliver does, and the process it forks runs as
 * that account. Answered at once when no process is needed or can be. */
static void
delivery_start(struct child *c, const struct ipc_lmtp_deliver *m, int fd)
{
	const char *why = NULL;
	unsigned status = DELIVERY_TEMP;
	char *error = NULL, *location = NULL, name[64];
	struct stat st;

	str_sanitize(name, sizeof(name), m->user, strlen(m->user));
	if (!config_lmtp_as_recipient(master.config))
		why = "deliveries as the recipient are not configured";
	else if ((m->kind == IPC_LMTP_DELIVER_SPOOL) != (fd >= 0))
		why = "a delivery needs its spool, a check none";
	else if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)))
		why = "the spool is not a regular file";
	else if (master.n_deliveries >= MASTER_DELIVERIES_MAX)
		why = "too many deliveries running";
	if (why != NULL) {
		log_warnx("worker %u: delivery as user %s refused: %s", c->slot, name, why);
		delivery_answer(c, c->pid, m->request_id, m->session_id, DELIVERY_TEMP, why);
		return;
	}
	errno = 0;
	struct passwd *pw = getpwnam(m->user);
	if (pw == NULL && errno != 0 && errno != ENOENT && errno != ESRCH) {
		error = xasprintf("looking up the account: %s", strerror(errno));
		goto answer;
	}
	if (pw == NULL || strcmp(pw->pw_name, m->user) != 0 ||
	    !recipient_system_account_ok(m->user, pw->pw_uid, master.config->first_valid_uid,
	    master.config->deny_users)) {
		status = IPC_LMTP_NO_USER;
		error = xstrdup("no account of this name may get mail");
		goto answer;
	}
	uid_t uid = pw->pw_uid;
	gid_t gid = pw->pw_gid;
	char uids[32], gids[32];
	snprintf(uids, sizeof(uids), "%u", (unsigned)uid);
	snprintf(gids, sizeof(gids), "%u", (unsigned)gid);
	char *home = xstrdup(pw->pw_dir);
	const struct passwd_entry e = { .user = (char *)m->user, .password = (char *)"",
	    .uid = uids, .gid = gids, .home = home, .uidl_format = UIDL_FORMAT_UNSET };
	location = mail_location_expand(master.config->mail, &e, &error);
	free(home);
	const char *path = NULL;
	const struct store_backend *b = location != NULL ? store_backend_for(location, &path) : NULL;
	if (location != NULL && b == NULL)
		error = xstrdup("the mail location is not a Maildir or mbox");
	if (b == NULL)
		goto answer;
	bool mbox = b == &store_mbox;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		error = xasprintf("socketpair: %s", strerror(errno));
		goto answer;
	}
	pid_t pid = fork();
	if (pid < 0) {
		error = xasprintf("fork: %s", strerror(errno));
		close(sv[0]);
		close(sv[1]);
		goto answer;
	}
	if (pid == 0) {
		close(sv[0]);
		/* the private key: the process never serves TLS (wiped) */
		SSL_CTX_free(master.env.ssl_ctx);
		master.env.ssl_ctx = NULL;
		user_child_forked();
		session_privileges_drop(uid, gid, mbox ? master.mail_gid : (gid_t)-1);
		const struct delivery_proc_start ds = { .ctl = sv[1], .request_id = m->request_id,
		    .session_id = m->session_id, .check = m->kind == IPC_LMTP_CHECK,
		    .size = m->size, .spool_fd = fd, .path = path, .mbox = mbox,
		    .sender = m->sender };
		delivery_proc_main(master.config, &ds);
	}
	close(sv[1]);
	struct delivery_child *dc = xcalloc(1, sizeof(*dc));
	dc->pid = pid;
	dc->sock = sv[0];
	dc->worker = c;
	dc->worker_pid = c->pid;
	dc->request_id = m->request_id;
	dc->session_id = m->session_id;
	memcpy(dc->name, name, sizeof(dc->name));
	dc->ev = event_new(master.base, dc->sock, EV_READ | EV_PERSIST, delivery_sock_cb, dc);
	event_add(dc->ev, NULL);
	dc->timer = evtimer_new(master.base, delivery_timer_cb, dc);
	struct timeval tv = { .tv_sec = master.config->lmtp_timeout > 0 ?
	    master.config->lmtp_timeout : MASTER_DELIVERY_SECONDS_DEFAULT };
	evtimer_add(dc->timer, &tv);
	dc->next = master.deliveries;
	master.deliveries = dc;
	master.n_deliveries++;
	log_debug("%s as user %s is pid %d", m->kind == IPC_LMTP_CHECK ? "check" : "delivery",
	    name, (int)pid);
	free(location);
	return;
answer:
	if (status != IPC_LMTP_NO_USER)
		log_warnx("worker %u: delivery as user %s: %s", c->slot, name, error);
	delivery_answer(c, c->pid, m->request_id, m->session_id, status, error);
	free(error);
	free(location);
}

/* A worker hands a logged-in session over (IPC_HANDOVER, with the
 * connection's descriptor); answer whether its process runs. */
static void
worker_control_cb(evutil_socket_t fd, short what, void *arg)
{
	struct child *c = arg;
	static unsigned char *buf;
	if (buf == NULL)
		buf = xmalloc(IPC_MAX_MSG);
	int passed;
	struct ipc_handover h;
	ssize_t n = ipc_recv_fd(fd, buf, IPC_MAX_MSG, &passed);
	if (n <= 0)
		return;
	if (ipc_type(buf, (size_t)n) == IPC_LMTP_DELIVER) {
		struct ipc_lmtp_deliver d;
		if (ipc_lmtp_deliver_decode(buf, (size_t)n, &d))
			delivery_start(c, &d, passed);
		else
			log_warnx("worker %u: malformed delivery request, ignored", c->slot);
		if (passed >= 0)
			close(passed);   /* a delivery process has its own */
		return;
	}
	if (!ipc_handover_decode(buf, (size_t)n, &h) || passed < 0) {
		log_warnx("worker %u: malformed message on its control channel, ignored", c->slot);
		if (passed >= 0)
			close(passed);
		return;
	}
	bool ok = session_route(c->slot, &h, passed);
	close(passed);   /* the session process has its own */
	unsigned char answer[IPC_HEADER_SIZE + 16];
	const struct ipc_handover_done done = { .request_id = h.request_id,
	    .session_id = h.session_id, .ok = ok };
	secure_wipe(buf, (size_t)n);   /* pipelined input */
	if (ipc_send(fd, answer, ipc_handover_done_encode(answer, sizeof(answer), &done)) < 0)
		log_warn("cannot answer worker %u's handover", c->slot);
}

/* mail_privileged_group's gid, at start and at each reload. */
static void
mail_group_resolve(const struct config *config)
{
	master.mail_gid = (gid_t)-1;
	if (config->mail_privileged_group[0] == '\0' || !config_session_per_user(config))
		return;
	struct group *gr = getgrnam(config->mail_privileged_group);
	if (gr == NULL)
		log_warnx("mail_privileged_group %s does not exist; session processes get no mail "
		    "group", config->mail_privileged_group);
	else
		master.mail_gid = gr->gr_gid;
}

/* The auth process answers a ping, or asks for the users file (a reload):
 * open it here and hand over the descriptor (users_file_open says why). */
static void
auth_control_cb(evutil_socket_t fd, short what, void *arg)
{
	/* The largest: a grant. */
	static unsigned char buf[IPC_HEADER_SIZE + 6 * 8 + (IPC_MAX_TICKET + 1) + (IPC_MAX_USER + 1) +
	    (IPC_MAX_LOCATION + 1) + IPC_MAX_ERROR];
	struct ipc_users_open req;
	struct ipc_ping pong;
	struct ipc_session_grant grant;
	int passed;
	ssize_t n = ipc_recv_fd(fd, buf, sizeof(buf), &passed);
	if (passed >= 0)
		close(passed);   /* nobody sends us descriptors */
	if (n > 0 && ipc_pong_decode(buf, (size_t)n, &pong)) {
		auth_pong(&pong);
		return;
	}
	if (n > 0 && ipc_session_grant_decode(buf, (size_t)n, &grant)) {
		grant_add(&grant);
		secure_wipe(buf, (size_t)n);
		return;
	}
	if (n <= 0 || !ipc_users_open_decode(buf, (size_t)n, &req))
		return;
	char why[IPC_MAX_ERROR + 1] = "";
	int ufd = users_file_open();
	if (ufd < 0)
		snprintf(why, sizeof(why), "%s: %s", master.config->users, strerror(errno));
	const struct ipc_users_fd answer = { .request_id = req.request_id, .error = why };
	size_t len = ipc_users_fd_encode(buf, sizeof(buf), &answer);
	if (ipc_send_fd(fd, buf, len, ufd) < 0 && ufd >= 0)
		log_warn("cannot pass the users file to the auth process");
	if (ufd >= 0)
		close(ufd);
}

static void
sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	master.stopping = true;
	service_notify_stopping();
	log_info("stopping on signal %d", (int)sig);
	for (size_t i = 0; i < master.n_children; i++)
		if (master.children[i].pid > 0)
			kill(master.children[i].pid, SIGTERM);
	for (struct session_child *sc = master.sessions; sc != NULL; sc = sc->next)
		kill(sc->pid, SIGTERM);
	event_base_loopbreak(master.base);
}

static void
master_wait_children(void)
{
	time_t deadline = time(NULL) + MASTER_STOP_GRACE_SECONDS;
	for (;;) {
		bool any = master.sessions != NULL;
		for (struct delivery_child *dc = master.deliveries; dc != NULL; dc = dc->next)
			any |= dc->pid > 0;
		for (size_t i = 0; i < master.n_children; i++)
			any |= master.children[i].pid > 0;
		if (!any)
			return;
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid > 0) {
			if (session_reaped(pid, status) || delivery_reaped(pid, status))
				continue;
			for (size_t i = 0; i < master.n_children; i++)
				if (master.children[i].pid == pid)
					master.children[i].pid = 0;
			continue;
		}
		if (pid < 0 && errno == ECHILD)
			return;
		if (time(NULL) >= deadline) {
			for (struct session_child *sc = master.sessions; sc != NULL; sc = sc->next)
				kill(sc->pid, SIGKILL);
			for (struct delivery_child *dc = master.deliveries; dc != NULL; dc = dc->next)
				if (dc->pid > 0)
					kill(dc->pid, SIGKILL);
			for (size_t i = 0; i < master.n_children; i++)
				if (master.children[i].pid > 0)
					kill(master.children[i].pid, SIGKILL);
			deadline = time(NULL) + 60;
		}
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

/* A reload message (up to IPC_MAX_MSG) is one SOCK_SEQPACKET message on the
 * master's end of a control socket: make its send buffer big enough
 * (limits_popboxd.h says why the default is not). Returns false when the
 * kernel would not allow it (net.core.wmem_max set below its default). */
static bool
control_socket_sndbuf(int fd)
{
	int want = IPC_SOCKET_SNDBUF, got = 0;
	socklen_t len = sizeof(got);
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof(want));
	if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) == 0 && got >= want)
		return true;
	/* As root the cap does not apply. */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof(want));
	len = sizeof(got);
	return getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) == 0 && got >= want;
}

static int
state_dir_prepare(const struct config *config, char **error_r)
{
	if (mkdir(config->state_dir, 0755) < 0 && errno != EEXIST) {
		*error_r = xasprintf("state_dir %s: %s", config->state_dir, strerror(errno));
		return -1;
	}
	return 0;
}

/* Write the pid file by a new temporary file and rename. The state
 * directory may be writable by the run_as user (sockets and runtime state
 * live there), so the master, perhaps still root, never follows a link
 * planted there: the temporary file is created with O_EXCL|O_NOFOLLOW
 * relative to the directory, after removing whatever had its name. */
static int
pid_file_write(const char *dir, const char *name)
{
	char tmp[NAME_MAX + 1], text[32];
	int dfd, fd, len, saved;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", name) >= (int)sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -1;
	if (unlinkat(dfd, tmp, 0) < 0 && errno != ENOENT)
		goto fail;
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		goto fail;
	len = snprintf(text, sizeof(text), "%d\n", (int)getpid());
	if (write(fd, text, (size_t)len) != len) {
		saved = errno;
		close(fd);
		unlinkat(dfd, tmp, 0);
		errno = saved;
		goto fail;
	}
	if (close(fd) < 0 || renameat(dfd, tmp, dfd, name) < 0)
		goto fail;
	close(dfd);
	return 0;
fail:
	saved = errno;
	close(dfd);
	errno = saved;
	return -1;
}

/* The master, still root, raises the limit on open files to what
 * max_connections needs per worker (POPBOXD_FDS_PER_SESSION each, never
 * lowering it); otherwise the soft limit goes up to the hard one, with a
 * warning when even that is too low. */
#define MASTER_FDS_PER_SESSION POPBOXD_FDS_PER_SESSION
#define MASTER_FDS_SPARE POPBOXD_FDS_SPARE
static void
master_raise_nofile(const struct config *config)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t workers = config->workers ? config->workers : ncpu > 0 ? (uint64_t)ncpu : 1;
	uint64_t want = MASTER_FDS_PER_SESSION * ((uint64_t)config->max_connections + workers - 1) /
	    workers + MASTER_FDS_SPARE;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
		struct rlimit up = { (rlim_t)want, (rlim_t)want };
		if (setrlimit(RLIMIT_NOFILE, &up) == 0)
			rl = up;   /* as root: beyond the hard limit (up to fs.nr_open) */
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t old = rl.rlim_cur;
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			rl.rlim_cur = old;
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		uint64_t fit = rl.rlim_cur > MASTER_FDS_SPARE ?
		    (rl.rlim_cur - MASTER_FDS_SPARE) / MASTER_FDS_PER_SESSION * workers : 0;
		log_warnx("open file limit %llu holds about %llu sessions over %llu workers, "
		    "fewer than max_connections = %u; raise it (ulimit -n, LimitNOFILE=) "
		    "or lower max_connections", (unsigned long long)rl.rlim_cur,
		    (unsigned long long)fit, (unsigned long long)workers, config->max_connections);
	}
}

/* Everything that can fail before the children start: run_as, the TLS
 * context, the state directory, the listeners; and the worker <-> auth
 * socket pairs. Logs why and returns -1 on failure. */
static int
master_prepare(const struct config *config)
{
	char *error = NULL;
	if (getuid() == 0 || geteuid() == 0) {
		if (resolve_users(config, &master.env, &error) < 0) {
			log_warnx("%s", error);
			return -1;
		}
		if (master.env.auth_uid == master.env.uid)
			log_warnx("auth_user %s has the uid of run_as %s: a compromised worker could "
			    "stop or trace the auth process; give it a user of its own",
			    config->auth_user, config->run_as);
		master.env.drop_privileges = true;
	}
	if (config->tls_cert != NULL) {
		char *cert, *key;
		if (tls_read_pem(config, &cert, &key, &error) < 0 ||
		    (master.env.ssl_ctx = tls_server_ctx_new(cert, key, config->tls_min_version, &error)) == NULL) {
			log_warnx("TLS: %s", error);
			free(error);
			return -1;
		}
		free(cert);
		free_secret(key);
	}
	if (state_dir_prepare(config, &error) < 0) {
		log_warnx("%s", error);
		return -1;
	}
	salt_key_prepare(config);
	/* Sockets passed by systemd replace binding; they must match the
	 * config's listeners one to one, LMTP's too (service.h). */
	size_t n_lmtp = config->n_lmtp_listens + config->n_lmtp_unix;
	int activated = service_listeners(config, &master.env.listeners, &error);
	if (activated < 0) {
		log_warnx("%s", error);
		free(error);
		return -1;
	}
	if (activated > 0) {
		master.socket_activated = true;
		master.env.n_listeners = config->n_listens + n_lmtp;
	} else {
		master.env.listeners = xcalloc(config->n_listens + n_lmtp, sizeof(struct listener));
	}
	for (size_t i = 0; !activated && i < config->n_listens; i++) {
		if (listener_bind(&config->listens[i], &master.env.listeners[i], &error) < 0) {
			log_warnx("%s", error);
			return -1;
		}
		master.env.n_listeners++;
	}
	for (size_t i = 0; !activated && i < config->n_lmtp_listens; i++) {
		struct listener *l = &master.env.listeners[master.env.n_listeners];
		if (listener_bind(&config->lmtp_listens[i], l, &error) < 0) {
			log_warnx("LMTP %s", error);
			return -1;
		}
		l->lmtp = true;
		master.env.n_listeners++;
	}
	for (size_t i = 0; !activated && i < config->n_lmtp_unix; i++) {
		struct listener *l = &master.env.listeners[master.env.n_listeners];
		if (lmtp_unix_bind(config, config->lmtp_unix[i], l, &error) < 0) {
			log_warnx("%s", error);
			return -1;
		}
		master.env.n_listeners++;
	}
	master.env.n_workers = workers_wanted(config);
	master.env.metrics_fd = -1;
	if (config->metrics_listen != NULL) {
		struct listener ml;
		master.env.metrics = metrics_new(master.env.n_workers);
		if (master.env.metrics == NULL) {
			log_warn("shared memory for the metrics");
			return -1;
		}
		if (listener_bind(config->metrics_listen, &ml, &error) < 0) {
			log_warnx("metrics_listen: %s", error);
			free(error);
			return -1;
		}
		master.env.metrics_fd = ml.fd;
		master.env.metrics_name = ml.name;
		metrics_attach(master.env.metrics, METRICS_ROW_MASTER);
	}
	master.env.iplimit = iplimit_new(master.env.n_workers);
	if (master.env.iplimit == NULL)
		log_warn("shared memory for max_connections_per_ip; the limit is not enforced");
	for (unsigned i = 0; i < master.env.n_workers; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
			fatal("socketpair");
		master.env.auth_fds[i] = sv[0];
		master.env.worker_fds[i] = sv[1];
	}
	return 0;
}

/* The children's slots: the auth process first, then the workers, each
 * with its control socket pair and restart timer. */
static void
master_children_init(void)
{
	master.n_children = 1 + master.env.n_workers + (master.env.metrics_fd >= 0);
	for (size_t i = 0; i < master.n_children; i++) {
		struct child *c = &master.children[i];
		int sv[2];
		c->role = i == 0 ? ROLE_AUTH : i <= master.env.n_workers ? ROLE_WORKER : ROLE_METRICS;
		c->slot = i == 0 ? 0 : (unsigned)(i - 1);
		c->backoff_ms = MASTER_BACKOFF_MIN_MS;
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
			fatal("socketpair");
		c->control_master = sv[0];
		c->control_child = sv[1];
		if (!control_socket_sndbuf(sv[0]) && i == 0)
			log_warnx("the kernel limits socket buffers below %d bytes (net.core.wmem_max): "
			    "a reload with config and TLS files near their size limits may fail",
			    IPC_SOCKET_SNDBUF);
		c->restart_timer = evtimer_new(master.base, child_restart_cb, c);
	}
}

/* Signals, and the auth process's requests for the users file. */
static void
master_events_add(void)
{
	master.events[0] = evsignal_new(master.base, SIGCHLD, sigchld_cb, NULL);
	master.events[1] = evsignal_new(master.base, SIGHUP, sighup_cb, NULL);
	master.events[2] = evsignal_new(master.base, SIGTERM, sigterm_cb, NULL);
	master.events[3] = evsignal_new(master.base, SIGINT, sigterm_cb, NULL);
	master.events[4] = event_new(master.base, master.children[0].control_master,
	    EV_READ | EV_PERSIST, auth_control_cb, NULL);
	master.events[5] = event_new(master.base, -1, EV_PERSIST, auth_ping_cb, NULL);
	for (size_t i = 0; i < N_ELEMENTS(master.events) - 1; i++)
		event_add(master.events[i], NULL);
	/* Workers hand sessions over to per-user session processes. */
	for (size_t i = 1; i < master.n_children; i++) {
		struct child *c = &master.children[i];
		master.worker_events[c->slot] = event_new(master.base, c->control_master,
		    EV_READ | EV_PERSIST, worker_control_cb, c);
		event_add(master.worker_events[c->slot], NULL);
	}
	struct timeval ping = { .tv_sec = MASTER_PING_INTERVAL_SECONDS };
	event_add(master.events[5], &ping);
	if (master.env.metrics != NULL)
		master.fold_timer = event_new(master.base, -1, EV_PERSIST, fold_timer_cb, NULL);
}

static void
master_free(void)
{
	for (size_t i = 0; i < N_ELEMENTS(master.events); i++)
		event_free(master.events[i]);
	if (master.status_timer != NULL)
		event_free(master.status_timer);
	if (master.fold_timer != NULL)
		event_free(master.fold_timer);
	for (size_t i = 0; i < N_ELEMENTS(master.worker_events); i++)
		if (master.worker_events[i] != NULL)
			event_free(master.worker_events[i]);
	for (size_t i = 0; i < master.n_children; i++)
		event_free(master.children[i].restart_timer);
	while (master.sessions != NULL) {
		struct session_child *sc = master.sessions;
		master.sessions = sc->next;
		session_child_free(sc);
	}
	deliveries_forget();
	event_base_free(master.base);
	grants_free();
	free(master.pid_path);
	for (size_t i = 0; i < master.env.n_listeners; i++) {
		struct listener *l = &master.env.listeners[i];
		struct stat st;
		close(l->fd);
		/* our socket file, unless another server has replaced it */
		if (l->unix_socket && lstat(l->name + strlen("unix:"), &st) == 0 &&
		    st.st_dev == l->dev && st.st_ino == l->ino)
			unlink(l->name + strlen("unix:"));
		free(l->name);
	}
	free(master.env.listeners);
	if (master.env.metrics_fd >= 0)
		close(master.env.metrics_fd);
	free(master.env.metrics_name);
	config_free(master.config);
}

int
master_run(struct config *config, bool foreground)
{
	memset(&master, 0, sizeof(master));
	master.config = config;
	master.env.config = config;
	if (master_prepare(config) < 0)
		return 1;
	if (!foreground && daemon(0, 0) < 0)
		fatal("daemon");

	master.pid_path = xasprintf("%s/popboxd.pid", config->state_dir);
	if (pid_file_write(config->state_dir, "popboxd.pid") < 0)
		log_warn("cannot write %s", master.pid_path);

	master.base = event_base_new();
	if (master.base == NULL)
		fatalx("event_base_new failed");
	signal(SIGPIPE, SIG_IGN);
	master_raise_nofile(config);
	master_children_init();
	master_events_add();
	users_file_check(config);
	mail_group_resolve(config);

	for (size_t i = 0; i < master.n_children; i++)
		child_start(&master.children[i]);

	log_info("popboxd %s started: %u workers, %zu listeners (%s%s)%s", POPBOXD_VERSION,
	    master.env.n_workers, master.env.n_listeners,
	    master.env.n_listeners ? master.env.listeners[0].name : "",
	    master.env.n_listeners > 1 ? ", ..." : "",
	    master.socket_activated ? ", sockets from systemd" : "");
	/* Listening since master_prepare: connections wait in the backlog
	 * until a worker accepts them. */
	notify_ready();
	if (getenv("NOTIFY_SOCKET") != NULL) {
		master.status_timer = event_new(master.base, -1, EV_PERSIST, status_timer_cb, NULL);
		struct timeval tv = { .tv_sec = MASTER_STATUS_INTERVAL_MS / 1000,
		    .tv_usec = (MASTER_STATUS_INTERVAL_MS % 1000) * 1000 };
		event_add(master.status_timer, &tv);
	}

	event_base_dispatch(master.base);

	master_wait_children();
	unlink(master.pid_path);
	log_info("stopped");
	master_free();
	return 0;
}
