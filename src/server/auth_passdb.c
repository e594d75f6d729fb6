/* References to loaded password databases. Contract in auth_passdb.h. */
#include "server/auth_passdb.h"

#include <stdlib.h>

#include "common/util.h"

struct passdb_ref *
passdb_ref_new(const struct passdb_ops *ops, struct passdb *db)
{
	struct passdb_ref *ref = xcalloc(1, sizeof(*ref));
	ref->ops = ops;
	ref->db = db;
	ref->refs = 1;
	return ref;
}

struct passdb_ref *
passdb_ref_hold(struct passdb_ref *ref)
{
	ref->refs++;
	return ref;
}

void
passdb_ref_release(struct passdb_ref *ref)
{
	if (ref != NULL && --ref->refs == 0) {
		ref->ops->free(ref->db);
		free(ref);
	}
}
