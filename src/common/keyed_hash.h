/* A keyed hash for hash tables whose keys come from peers (user names,
 * addresses, UIDLs): SipHash-2-4 (OpenSSL's EVP_MAC "SIPHASH") under a
 * random key made once per process. Without the key nobody can choose keys
 * that collide, so a peer cannot turn a table into a list (quadratic time)
 * or aim a flood of keys at one entry to evict it. Thread-safe. */
#ifndef POPBOX_KEYED_HASH_H
#define POPBOX_KEYED_HASH_H

#include <stddef.h>
#include <stdint.h>

/* 64-bit hash of data[0..len). Fatal if OpenSSL has no SipHash. */
uint64_t keyed_hash64(const void *data, size_t len);

#endif
