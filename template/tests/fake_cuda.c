/* A stand-in for libcuda.so.1 with the driver's thread-affinity rule: each
 * thread has its own current-context stack; calls that need a context fail
 * with CUDA_ERROR_INVALID_CONTEXT (201) on a thread without one. Lets the
 * CUDA template run its whole path on machines without a GPU. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct ctx { CUdevice dev; } *CUcontext;
typedef unsigned long long CUdeviceptr;

#define INVALID_CONTEXT 201
static __thread CUcontext stack[16];
static __thread int depth;

static CUcontext current(void) { return depth > 0 ? stack[depth - 1] : NULL; }

CUresult cuInit(unsigned flags) { return flags == 0 ? 0 : 1; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
CUresult cuDeviceGet(CUdevice *d, int ordinal) { *d = ordinal; return ordinal == 0 ? 0 : 101; }
CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    (void)d;
    strncpy(name, "Fake GPU", (size_t)len);
    return 0;
}
CUresult cuCtxCreate_v2(CUcontext *out, unsigned flags, CUdevice d) {
    (void)flags;
    CUcontext c = malloc(sizeof *c);
    c->dev = d;
    stack[depth++] = c;
    *out = c;
    return 0;
}
CUresult cuCtxDestroy_v2(CUcontext c) {
    if (current() == c) depth--;
    free(c);
    return 0;
}
CUresult cuCtxPushCurrent_v2(CUcontext c) { stack[depth++] = c; return 0; }
CUresult cuCtxPopCurrent_v2(CUcontext *out) {
    if (depth == 0) return INVALID_CONTEXT;
    *out = stack[--depth];
    return 0;
}
CUresult cuCtxGetDevice(CUdevice *d) {
    if (!current()) return INVALID_CONTEXT;
    *d = current()->dev;
    return 0;
}
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    if (!current()) return INVALID_CONTEXT;
    *p = (CUdeviceptr)(uintptr_t)malloc(n);
    return 0;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    if (!current()) return INVALID_CONTEXT;
    free((void *)(uintptr_t)p);
    return 0;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    if (!current()) return INVALID_CONTEXT;
    memcpy((void *)(uintptr_t)dst, src, n);
    return 0;
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    if (!current()) return INVALID_CONTEXT;
    memcpy(dst, (const void *)(uintptr_t)src, n);
    return 0;
}
CUresult cuGetErrorName(CUresult e, const char **name) {
    *name = e == 0 ? "CUDA_SUCCESS" : e == INVALID_CONTEXT ? "CUDA_ERROR_INVALID_CONTEXT" : "CUDA_ERROR_UNKNOWN";
    return 0;
}
