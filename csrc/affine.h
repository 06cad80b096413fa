/*
 * affine: a small thread-affine C library, modelled on real vendor SDKs
 * (OpenGL/EGL, the CUDA driver API, OpenSSL's error queue, PKCS#11 HSMs).
 *
 * Thread-affinity contract
 * ------------------------
 * - A context (aff_ctx) is created by one thread, its *owner*. Only the owner
 *   may destroy it or query it explicitly (aff_ctx_info); other threads get
 *   AFF_E_WRONG_THREAD.
 * - A context is *current* on at most one thread at a time
 *   (aff_make_current). The "current context" pointer is per thread
 *   (__thread), like OpenGL's make-current or CUDA's cuCtxSetCurrent.
 * - aff_op and friends use the calling thread's current context implicitly.
 *   While a context is current, its call state lives in the calling thread's
 *   __thread storage; aff_release_current writes it back into the context.
 *   So a sequence of calls gives exactly predictable outputs as long as it
 *   stays with the context, and a call made on another thread either fails
 *   (AFF_E_NO_CONTEXT) or is computed from that thread's state (wrong value).
 * - Errors are errno-style: every failing call stores its status and a
 *   message in the calling thread's __thread storage; successful calls leave
 *   them untouched. Reading them on another thread reads that thread's error.
 *
 * Visits: while aff_visit runs on a thread (its callbacks included), that
 * thread's current context is pinned. Anything that would change or destroy
 * it fails with AFF_E_IN_CALLBACK: aff_make_current of another context,
 * aff_release_current, aff_ctx_destroy of the current context. Creating
 * contexts, destroying non-current ones, aff_op on the visited context and
 * nested visits of it stay allowed, since they do not disturb the visit.
 *
 * Output model: make-current loads the context's state s; each successful
 * aff_op(in) does s = aff_mix64(s ^ in) and returns the new s. A new context
 * starts at s = aff_mix64(seed). Failed calls do not change s.
 */
#ifndef AFFINE_H
#define AFFINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. 0 is success; every other value is an error. */
#define AFF_OK 0
/** Bad input by contract; the message says which argument and why. */
#define AFF_E_INVALID_ARG 1
/** No context is current on the calling thread. */
#define AFF_E_NO_CONTEXT 2
/** The context is current on another thread. */
#define AFF_E_BUSY 3
/** An explicit-context call was made from a thread that does not own it. */
#define AFF_E_WRONG_THREAD 4
/** A callback asked to stop. */
#define AFF_E_CALLBACK 5
/** Out of memory. */
#define AFF_E_NOMEM 6
/** Called from inside an aff_visit callback on this thread, and the call
 *  would change or destroy the context the visit runs on (aff_make_current
 *  of another context, aff_release_current, aff_ctx_destroy of the current
 *  context). Nothing was changed. */
#define AFF_E_IN_CALLBACK 7

/** Largest valid input to aff_op: inputs above it are invalid by contract. */
#define AFF_MAX_INPUT 0x0000FFFFFFFFFFFFull
/** Largest accepted aff_config.init_work. */
#define AFF_MAX_INIT_WORK 100000000u
/** A sensible init_work: a few tens of microseconds of simulated set-up. */
#define AFF_DEFAULT_INIT_WORK 20000u
/** Size of the per-thread error message buffer, terminator included. */
#define AFF_MESSAGE_CAP 256

/** An opaque context. */
typedef struct aff_ctx aff_ctx;

/** Context configuration. */
typedef struct aff_config {
    /** Rounds of simulated initialisation work (expensive on purpose). */
    uint32_t init_work;
    /** Seed of the context's call state; must be non-zero. */
    uint64_t seed;
} aff_config;

/** Process-wide counters (atomics; any thread). */
typedef struct aff_stats {
    /** contexts created */
    uint64_t created;
    /** contexts destroyed */
    uint64_t destroyed;
    /** successful aff_op calls (batch and visit included) */
    uint64_t calls;
    /** calls rejected with AFF_E_NO_CONTEXT */
    uint64_t no_context;
    /** calls rejected with AFF_E_WRONG_THREAD */
    uint64_t wrong_thread;
    /** make-current rejected with AFF_E_BUSY */
    uint64_t busy;
    /** successful make-current bindings */
    uint64_t switches;
} aff_stats;

/** Callback for aff_visit: return 0 to go on, non-zero to stop. It must
 *  return normally (no longjmp or unwinding out of it). */
typedef int (*aff_visit_cb)(void *user, uint64_t index, uint64_t value);

/**
 * Creates a context owned by the calling thread. Expensive: runs
 * cfg->init_work rounds of set-up. Does not make it current.
 * Any thread. Errors: AFF_E_INVALID_ARG (cfg or out NULL, seed 0,
 * init_work above AFF_MAX_INIT_WORK), AFF_E_NOMEM. Nothing leaks on error.
 */
int aff_ctx_create(const aff_config *cfg, aff_ctx **out);

/**
 * Destroys a context. Owner thread only (AFF_E_WRONG_THREAD otherwise).
 * If it is current on the calling thread it is released first; if it is
 * current on another thread: AFF_E_BUSY. NULL: AFF_E_INVALID_ARG.
 * AFF_E_IN_CALLBACK if it is the calling thread's current context and an
 * aff_visit is running on this thread (a callback would pull the context out
 * from under the visit); destroying a context that is not current stays
 * allowed during a visit.
 */
int aff_ctx_destroy(aff_ctx *ctx);

/**
 * Makes ctx current on the calling thread, releasing the thread's previous
 * current context if any. Any thread. Errors: AFF_E_INVALID_ARG (NULL),
 * AFF_E_BUSY (current on another thread), AFF_E_IN_CALLBACK (ctx is not the
 * current context and an aff_visit is running on this thread: switching would
 * release the context the visit runs on). Making the already current context
 * current again is a no-op, also during a visit.
 */
int aff_make_current(aff_ctx *ctx);

/**
 * Releases the calling thread's current context, saving its call state into
 * it. Errors: AFF_E_NO_CONTEXT (none current on this thread),
 * AFF_E_IN_CALLBACK (an aff_visit is running on this thread: the current
 * context is the one it runs on).
 */
int aff_release_current(void);

/**
 * One call on the current context: advances the state and writes it to out.
 * Errors: AFF_E_INVALID_ARG (out NULL, in > AFF_MAX_INPUT),
 * AFF_E_NO_CONTEXT (none current on this thread).
 */
int aff_op(uint64_t in, uint64_t *out);

/**
 * n calls in one: out[i] = aff_op(in[i]). Stops at the first invalid input;
 * *done (if not NULL) receives the number of calls that succeeded. Errors as
 * aff_op, plus AFF_E_INVALID_ARG for NULL arrays with n > 0.
 */
int aff_op_batch(const uint64_t *in, uint64_t *out, size_t n, size_t *done);

/**
 * Reads the number of successful calls made on ctx so far (those of the
 * current binding included). Explicit context: owner thread only.
 * Errors: AFF_E_INVALID_ARG (NULL), AFF_E_WRONG_THREAD.
 */
int aff_ctx_info(const aff_ctx *ctx, uint64_t *calls_out);

/**
 * For i in 0..n: v = aff_op(i), then cb(user, i, v), on the calling thread.
 * A non-zero return from cb stops the visit with AFF_E_CALLBACK.
 * Until it returns, the thread's current context is pinned: from cb,
 * aff_make_current of another context, aff_release_current and
 * aff_ctx_destroy of the current context fail with AFF_E_IN_CALLBACK (see the
 * contract above). cb may create contexts, destroy non-current ones, call
 * aff_op and aff_op_batch (on the visited context: they advance its state
 * between the visit's own calls) and visit again (nested).
 * Errors: AFF_E_INVALID_ARG (cb NULL), AFF_E_NO_CONTEXT, AFF_E_CALLBACK.
 */
int aff_visit(uint64_t n, aff_visit_cb cb, void *user);

/** The calling thread's last error status (AFF_OK if none since clear). */
int aff_last_error(void);

/** The calling thread's last error message ("" if none). Never NULL; valid
 *  until the calling thread's next failing call or aff_clear_error. */
const char *aff_last_error_message(void);

/** Clears the calling thread's last error. */
void aff_clear_error(void);

/** Copies the process-wide counters. Any thread. */
void aff_stats_get(aff_stats *out);

/** The state mixer (splitmix64 finaliser); pure, any thread. */
uint64_t aff_mix64(uint64_t x);

#ifdef __cplusplus
}
#endif

#endif /* AFFINE_H */
