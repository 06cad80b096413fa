/* affine: the thread-affine C library. See affine.h for the contract. */
#include "affine.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

struct aff_ctx {
    uint64_t seed;
    /* Call state while the context is not current anywhere. */
    uint64_t saved_state;
    /* Successful calls on this context; written by the thread it is current
     * on, read by the owner (aff_ctx_info), hence atomic. */
    _Atomic uint64_t calls;
    /* Identity of the creating thread (see thread_id). */
    uintptr_t owner;
    /* Identity of the thread it is current on, 0 when none. */
    _Atomic uintptr_t bound;
};

/* Per-thread state: what makes this library thread-affine. */
static __thread aff_ctx *tls_current;
static __thread uint64_t tls_state;
static __thread int tls_error;
static __thread char tls_message[AFF_MESSAGE_CAP];
/* Its address identifies the calling thread among live threads. */
static __thread char tls_token;
/* Number of aff_visit calls running on this thread (nested visits count
 * each). While it is non-zero tls_current is pinned: nothing may change or
 * destroy it, so the visit loop's op_one always has a context. */
static __thread unsigned long tls_visit_depth;

static _Atomic uint64_t g_created, g_destroyed, g_calls, g_no_context,
    g_wrong_thread, g_busy, g_switches;

static uintptr_t thread_id(void) { return (uintptr_t)&tls_token; }

static void bump(_Atomic uint64_t *counter) {
    atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

__attribute__((format(printf, 2, 3)))
static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_message, sizeof tls_message, fmt, ap);
    va_end(ap);
    tls_error = code;
    return code;
}

uint64_t aff_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

int aff_ctx_create(const aff_config *cfg, aff_ctx **out) {
    if (out == NULL) return fail(AFF_E_INVALID_ARG, "aff_ctx_create: out is NULL");
    *out = NULL;
    if (cfg == NULL) return fail(AFF_E_INVALID_ARG, "aff_ctx_create: cfg is NULL");
    if (cfg->seed == 0) return fail(AFF_E_INVALID_ARG, "aff_ctx_create: seed must be non-zero");
    if (cfg->init_work > AFF_MAX_INIT_WORK)
        return fail(AFF_E_INVALID_ARG,
                    "aff_ctx_create: init_work %u exceeds AFF_MAX_INIT_WORK (%u)",
                    cfg->init_work, AFF_MAX_INIT_WORK);

    aff_ctx *ctx = malloc(sizeof *ctx);
    if (ctx == NULL) return fail(AFF_E_NOMEM, "aff_ctx_create: out of memory");

    /* Simulated driver initialisation: deliberately expensive. */
    volatile uint64_t sink = cfg->seed;
    for (uint32_t i = 0; i < cfg->init_work; i++) sink = aff_mix64(sink + i);

    ctx->seed = cfg->seed;
    ctx->saved_state = aff_mix64(cfg->seed);
    atomic_init(&ctx->calls, 0);
    ctx->owner = thread_id();
    atomic_init(&ctx->bound, 0);
    bump(&g_created);
    *out = ctx;
    return AFF_OK;
}

static void release_current(void) {
    aff_ctx *ctx = tls_current;
    ctx->saved_state = tls_state;
    tls_current = NULL;
    /* Release: the next thread to bind sees saved_state. */
    atomic_store_explicit(&ctx->bound, 0, memory_order_release);
}

int aff_ctx_destroy(aff_ctx *ctx) {
    if (ctx == NULL) return fail(AFF_E_INVALID_ARG, "aff_ctx_destroy: ctx is NULL");
    if (ctx->owner != thread_id()) {
        bump(&g_wrong_thread);
        return fail(AFF_E_WRONG_THREAD, "aff_ctx_destroy: called from a thread that does not own the context");
    }
    if (tls_current == ctx && tls_visit_depth > 0)
        return fail(AFF_E_IN_CALLBACK,
                    "aff_ctx_destroy: called from inside an aff_visit callback on this thread, "
                    "and the context is the current one the visit runs on");
    if (tls_current == ctx) release_current();
    if (atomic_load_explicit(&ctx->bound, memory_order_acquire) != 0) {
        bump(&g_busy);
        return fail(AFF_E_BUSY, "aff_ctx_destroy: context is current on another thread");
    }
    free(ctx);
    bump(&g_destroyed);
    return AFF_OK;
}

int aff_make_current(aff_ctx *ctx) {
    if (ctx == NULL) return fail(AFF_E_INVALID_ARG, "aff_make_current: ctx is NULL");
    if (tls_current == ctx) return AFF_OK;
    if (tls_visit_depth > 0)
        return fail(AFF_E_IN_CALLBACK,
                    "aff_make_current: called from inside an aff_visit callback on this thread; "
                    "switching contexts would release the one the visit runs on");
    uintptr_t expected = 0;
    /* Acquire: see the saved_state written by the last thread to release. */
    if (!atomic_compare_exchange_strong_explicit(&ctx->bound, &expected, thread_id(),
                                                 memory_order_acquire, memory_order_relaxed)) {
        bump(&g_busy);
        return fail(AFF_E_BUSY, "aff_make_current: context is current on another thread");
    }
    if (tls_current != NULL) release_current();
    tls_current = ctx;
    tls_state = ctx->saved_state;
    bump(&g_switches);
    return AFF_OK;
}

int aff_release_current(void) {
    if (tls_visit_depth > 0)
        return fail(AFF_E_IN_CALLBACK,
                    "aff_release_current: called from inside an aff_visit callback on this thread; "
                    "the current context is the one the visit runs on");
    if (tls_current == NULL) {
        bump(&g_no_context);
        return fail(AFF_E_NO_CONTEXT, "aff_release_current: no context is current on this thread");
    }
    release_current();
    return AFF_OK;
}

/* One call on the current context; the caller has checked tls_current. */
static int op_one(uint64_t in, uint64_t *out, const char *who) {
    if (in > AFF_MAX_INPUT)
        return fail(AFF_E_INVALID_ARG, "%s: input %llu exceeds AFF_MAX_INPUT", who,
                    (unsigned long long)in);
    tls_state = aff_mix64(tls_state ^ in);
    *out = tls_state;
    atomic_fetch_add_explicit(&tls_current->calls, 1, memory_order_relaxed);
    return AFF_OK;
}

static int no_context(const char *who) {
    bump(&g_no_context);
    return fail(AFF_E_NO_CONTEXT, "%s: no context is current on this thread", who);
}

int aff_op(uint64_t in, uint64_t *out) {
    if (out == NULL) return fail(AFF_E_INVALID_ARG, "aff_op: out is NULL");
    if (tls_current == NULL) return no_context("aff_op");
    int rc = op_one(in, out, "aff_op");
    if (rc == AFF_OK) bump(&g_calls);
    return rc;
}

int aff_op_batch(const uint64_t *in, uint64_t *out, size_t n, size_t *done) {
    if (done != NULL) *done = 0;
    if (n > 0 && (in == NULL || out == NULL))
        return fail(AFF_E_INVALID_ARG, "aff_op_batch: NULL array with n = %zu", n);
    if (tls_current == NULL) return no_context("aff_op_batch");
    size_t i = 0;
    int rc = AFF_OK;
    for (; i < n; i++) {
        rc = op_one(in[i], &out[i], "aff_op_batch");
        if (rc != AFF_OK) {
            fail(rc, "aff_op_batch: input[%zu] = %llu exceeds AFF_MAX_INPUT", i,
                 (unsigned long long)in[i]);
            break;
        }
    }
    atomic_fetch_add_explicit(&g_calls, i, memory_order_relaxed);
    if (done != NULL) *done = i;
    return rc;
}

int aff_ctx_info(const aff_ctx *ctx, uint64_t *calls_out) {
    if (ctx == NULL || calls_out == NULL)
        return fail(AFF_E_INVALID_ARG, "aff_ctx_info: ctx or calls_out is NULL");
    if (ctx->owner != thread_id()) {
        bump(&g_wrong_thread);
        return fail(AFF_E_WRONG_THREAD, "aff_ctx_info: called from a thread that does not own the context");
    }
    *calls_out = atomic_load_explicit(&ctx->calls, memory_order_relaxed);
    return AFF_OK;
}

int aff_visit(uint64_t n, aff_visit_cb cb, void *user) {
    if (cb == NULL) return fail(AFF_E_INVALID_ARG, "aff_visit: cb is NULL");
    if (tls_current == NULL) return no_context("aff_visit");
    /* Pin tls_current for the whole loop, callbacks included (see
     * tls_visit_depth); every exit below goes through the decrement. */
    tls_visit_depth++;
    int rc = AFF_OK;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = 0;
        /* i <= AFF_MAX_INPUT for any realistic n; an error stops the visit. */
        rc = op_one(i, &v, "aff_visit");
        if (rc != AFF_OK) break;
        bump(&g_calls);
        if (cb(user, i, v) != 0) {
            rc = fail(AFF_E_CALLBACK, "aff_visit: callback stopped the visit at index %llu",
                      (unsigned long long)i);
            break;
        }
    }
    tls_visit_depth--;
    return rc;
}

int aff_last_error(void) { return tls_error; }

const char *aff_last_error_message(void) { return tls_message; }

void aff_clear_error(void) {
    tls_error = AFF_OK;
    tls_message[0] = '\0';
}

void aff_stats_get(aff_stats *out) {
    if (out == NULL) return;
    out->created = atomic_load_explicit(&g_created, memory_order_relaxed);
    out->destroyed = atomic_load_explicit(&g_destroyed, memory_order_relaxed);
    out->calls = atomic_load_explicit(&g_calls, memory_order_relaxed);
    out->no_context = atomic_load_explicit(&g_no_context, memory_order_relaxed);
    out->wrong_thread = atomic_load_explicit(&g_wrong_thread, memory_order_relaxed);
    out->busy = atomic_load_explicit(&g_busy, memory_order_relaxed);
    out->switches = atomic_load_explicit(&g_switches, memory_order_relaxed);
}
