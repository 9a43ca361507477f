/* segment.h - shared-memory counters and a GCRA rate-limit table for a3s-gateway's worker processes.
 *
 * Written for this project; the Cython wrapper is src/a3s_gateway/_segment_c.pyx and its pure-Python twin is
 * src/a3s_gateway/_segment_py.py (same results; tests/unit/test_segment.py runs both).
 *
 * The segment is an array of 64-bit signed words mapped MAP_SHARED by the supervisor and every worker. Every
 * access here is a sequentially consistent GCC __atomic builtin, so processes need no lock. Nothing checks bounds:
 * the wrapper does (an index past the mapping must raise, never fault).
 *
 * Rate-limit table: `capacity` entries (a power of two) starting at word `table`, two words each: the key's hash
 * (0 = empty; see seg_hash) and its TAT, the theoretical arrival time of GCRA (generic cell rate algorithm, the
 * token bucket in one number), in nanoseconds of the caller's clock (CLOCK_MONOTONIC). A key lives in the first
 * SEG_PROBES entries from hash & (capacity - 1); entries are claimed and never emptied again. An empty entry has
 * both words 0: a table starts as zeroed words (a new segment is zeroed), and is cleared by zeroing all its words.
 */
#ifndef A3S_SEGMENT_H
#define A3S_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Entries looked at per key (linear probing); when all are taken by other keys, one of them is recycled. */
#define SEG_PROBES 8
/* Words per table entry: the key hash, then the TAT. */
#define SEG_ENTRY_WORDS 2

/* FNV-1a 64 of the key bytes; 0 (the empty mark) is mapped to 1. */
uint64_t seg_hash(const void *key, size_t len);

/* base[index] += delta (wrapping at 64 bits); the new value. */
int64_t seg_add(int64_t *base, size_t index, int64_t delta);
int64_t seg_get(const int64_t *base, size_t index);
void seg_set(int64_t *base, size_t index, int64_t value);
/* base[index] = desired if it equals expected; true when it did. */
bool seg_cas(int64_t *base, size_t index, int64_t expected, int64_t desired);

/* Take one token for `key` at `now_ns`: one token every `interval_ns` (>= 1), at most `burst` (> 0) in the bucket.
 *
 * Returns the tokens left after the decision, like TokenBuckets.take of src/a3s_gateway/middleware/ratelimit.py:
 * >= 0 when allowed (tokens after taking one), tokens - 1 in [-1, 0) when denied (nothing is written then).
 * The caller keeps |now_ns| <= 2^61 and interval_ns, burst * interval_ns <= 2^60 (no overflow inside). A new or
 * recycled key starts full. */
double seg_take(int64_t *base, size_t table, size_t capacity, const void *key, size_t keylen, int64_t now_ns,
                int64_t interval_ns, double burst);

/* Entries of the table that hold a key. */
size_t seg_used(const int64_t *base, size_t table, size_t capacity);

#endif
