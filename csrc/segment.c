/* segment.c - shared-memory counters and the GCRA rate-limit table; see segment.h for the contract.
 *
 * Why GCRA: a token bucket needs two numbers (tokens, last update) that must change together; GCRA keeps the same
 * bucket in one word, the TAT, so one compare-and-swap updates it and processes need no lock. With I the interval
 * between tokens and L = burst * I, a bucket with TAT t holds (L - (max(t, now) - now)) / I tokens (TAT <= now: full);
 * taking one moves the TAT to max(t, now) + I, allowed when that stays within L of now.
 */
#include "segment.h"

#include <math.h>

#define SEQ __ATOMIC_SEQ_CST

uint64_t seg_hash(const void *key, size_t len) {
    const unsigned char *p = key;
    uint64_t h = 14695981039346656037ULL; /* FNV-1a 64 offset basis */
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL; /* FNV 64 prime */
    }
    return h ? h : 1;
}

int64_t seg_add(int64_t *base, size_t index, int64_t delta) {
    /* on the unsigned view: wrapping is defined there (int64_t and uint64_t may alias) */
    return (int64_t)__atomic_add_fetch((uint64_t *)(base + index), (uint64_t)delta, SEQ);
}

int64_t seg_get(const int64_t *base, size_t index) {
    return __atomic_load_n(base + index, SEQ);
}

void seg_set(int64_t *base, size_t index, int64_t value) {
    __atomic_store_n(base + index, value, SEQ);
}

bool seg_cas(int64_t *base, size_t index, int64_t expected, int64_t desired) {
    return __atomic_compare_exchange_n(base + index, &expected, desired, false, SEQ, SEQ);
}

/* One call's bucket: the clock, the interval, the bucket size L and how far past `now` a TAT may go. */
typedef struct {
    int64_t now;
    int64_t interval;
    int64_t limit;
    int64_t room; /* L + slack - I: a TAT ahead of now by more than this has no whole token */
    double burst;
} gcra;

/* Tokens in a bucket whose TAT is `ahead` ns after now, in [0, burst]. */
static double tokens_at(const gcra *g, int64_t ahead) {
    double tokens = (double)(g->limit - ahead) / (double)g->interval;
    if (tokens > g->burst)
        return g->burst;
    return tokens < 0.0 ? 0.0 : tokens;
}

/* How far the TAT `tat` is ahead of now (0 when it is not), saturated at INT64_MAX (a TAT no call wrote). */
static int64_t ahead_of(const gcra *g, int64_t tat) {
    int64_t ahead;
    if (tat <= g->now)
        return 0;
    if (__builtin_sub_overflow(tat, g->now, &ahead))
        return INT64_MAX;
    return ahead;
}

/* Outcome of taking from one entry: done (*left set), or the entry went to another key (look it up again). */
typedef enum { TAKE_DONE, TAKE_MOVED } take_outcome;

/* The compare-and-swap loop on the entry's TAT word. `seen` is the value read (the CAS's expected value); `full`
 * makes the first attempt treat the bucket as full (a key that starts or restarts), whatever `seen` holds. */
static take_outcome take_from(int64_t *entry, int64_t hash, int64_t seen, bool full, const gcra *g, double *left) {
    for (;;) {
        int64_t ahead = full ? 0 : ahead_of(g, seen);
        double before = tokens_at(g, ahead);
        if (ahead > g->room) {
            *left = before - 1.0; /* denied: nothing written */
            return TAKE_DONE;
        }
        int64_t next = g->now + ahead + g->interval;
        if (__atomic_compare_exchange_n(entry + 1, &seen, next, false, SEQ, SEQ)) {
            *left = before >= 1.0 ? before - 1.0 : 0.0; /* within the slack below one token: nothing left */
            return TAKE_DONE;
        }
        /* another process changed the TAT (now in `seen`): decide again, unless the entry was recycled */
        if (__atomic_load_n(entry, SEQ) != hash)
            return TAKE_MOVED;
        full = false;
    }
}

double seg_take(int64_t *base, size_t table, size_t capacity, const void *key, size_t keylen, int64_t now_ns,
                int64_t interval_ns, double burst) {
    const int64_t hash = (int64_t)seg_hash(key, keylen);
    const size_t mask = capacity - 1;
    const size_t probes = capacity < SEG_PROBES ? capacity : SEG_PROBES;
    gcra g;
    g.now = now_ns;
    g.interval = interval_ns;
    g.limit = (int64_t)floor(burst * (double)interval_ns + 0.5);
    g.room = g.limit + (int64_t)ceil(burst) - interval_ns; /* slack: 1 ns per token absorbs the clock's float noise */
    g.burst = burst;
    int64_t *entries = base + table;
    double left;
    for (;;) {
        int64_t *entry = NULL;
        int64_t seen = 0;
        bool full = false;
        int64_t *victim = NULL;
        int64_t victim_key = 0;
        int64_t victim_tat = 0;
        for (size_t i = 0; i < probes; i++) {
            int64_t *e = entries + SEG_ENTRY_WORDS * (((size_t)hash + i) & mask);
            int64_t k = __atomic_load_n(e, SEQ);
            if (k == 0) {
                /* entries fill in probe order and never empty again: the key is not further on */
                if (__atomic_compare_exchange_n(e, &k, hash, false, SEQ, SEQ)) {
                    entry = e; /* a fresh entry's TAT word is 0 */
                    full = true;
                    break;
                }
                /* claimed meanwhile: `k` holds its key */
            }
            if (k == hash) {
                entry = e;
                seen = __atomic_load_n(e + 1, SEQ);
                break;
            }
            int64_t tat = __atomic_load_n(e + 1, SEQ);
            if (victim == NULL || tat < victim_tat) {
                victim = e;
                victim_key = k;
                victim_tat = tat;
            }
        }
        if (entry == NULL) {
            /* every probed entry holds another key: recycle the one with the earliest TAT (a full bucket when it is
             * <= now, so nothing is lost; otherwise the least recently refilled). The new key starts full. */
            if (!__atomic_compare_exchange_n(victim, &victim_key, hash, false, SEQ, SEQ))
                continue; /* another process changed it first: look again */
            entry = victim;
            seen = victim_tat;
            full = true;
        }
        if (take_from(entry, hash, seen, full, &g, &left) == TAKE_DONE)
            return left;
    }
}

size_t seg_used(const int64_t *base, size_t table, size_t capacity) {
    size_t used = 0;
    for (size_t i = 0; i < capacity; i++)
        used += __atomic_load_n(base + table + SEG_ENTRY_WORDS * i, SEQ) != 0;
    return used;
}
