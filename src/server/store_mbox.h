/* The mbox backend's own parts beyond store.h (store_mbox.c says how the
 * mbox, its lock, index and expunge journal work). */
#ifndef POPBOX_STORE_MBOX_H
#define POPBOX_STORE_MBOX_H

#include "server/store.h"

/* A message's UIDL from its identity digest (mbox_parse.h): 40 hex chars;
 * ordinal n > 0 for the n-th further copy of the same message. malloc'd. */
char *mbox_uidl_for(const unsigned char *digest, unsigned ordinal);

#endif
