/* bf16 matrix products on the CPU through oneDNN, for src/kernels/bf16.rs:
 *
 *     c[m, n] = a[m, k] b[k, n] (+ bias[n])
 *
 * with `a` f32 with any strides (a_m along m, a_k along k: a transposed matrix is a_m = 1),
 * converted to bf16 by a reorder, or already bf16 (`a_bf16`, read as it is: a convolution's
 * weight); `b` bf16 with any strides
 * (a linear layer's weight [n, k] is b with strides (1, k)); `bias` f32 or NULL; `c` f32 (row
 * stride ldc). The matmul accumulates in f32 and uses the AVX512-BF16 or AMX instructions where
 * the CPU has them. Each call runs on the calling thread (the caller splits the work over its
 * own threads). Creating oneDNN primitives costs tens of microseconds, as much as a small
 * product, so each thread keeps the primitives and memory objects of its last shapes and only
 * points them at the new data. Returns 0, or oneDNN's status. */
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void omp_set_num_threads(int);

static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_runtime_error;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void make_engine(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

int ace_onednn_cpu_isa(void) { return (int)dnnl_get_effective_cpu_isa(); }

/* The shape of a product: what its primitives depend on. */
struct shape {
    int64_t m, n, k, a_m, a_k, b_k, b_n, ldc;
    int bias, a_bf16;
};

/* A product's primitives and memory objects, made once per shape and thread. */
struct prepared {
    struct shape shape;
    int used;
    dnnl_primitive_t reorder, matmul;
    dnnl_memory_t a, a_bf16, b, bias, c;
};

/* Shapes kept per thread: the attention's two, a DiT block's linear layers, a few tails. */
#define KEPT 16

static __thread struct prepared kept[KEPT];
static __thread int next_evicted;
static __thread dnnl_stream_t stream;
/* The bf16 copy of `a`, shared by the shapes of a thread. */
static __thread void *scratch;
static __thread size_t scratch_bytes;

static void release(struct prepared *p) {
    dnnl_primitive_destroy(p->reorder);
    dnnl_primitive_destroy(p->matmul);
    dnnl_memory_destroy(p->a);
    dnnl_memory_destroy(p->a_bf16);
    dnnl_memory_destroy(p->b);
    dnnl_memory_destroy(p->bias);
    dnnl_memory_destroy(p->c);
    memset(p, 0, sizeof *p);
}

#define TRY(x)                      \
    do {                            \
        status = (x);               \
        if (status != dnnl_success) \
            goto failed;            \
    } while (0)

static dnnl_status_t prepare(struct prepared *p, const struct shape *s) {
    dnnl_status_t status;
    dnnl_primitive_desc_t reorder_pd = NULL, matmul_pd = NULL;
    dnnl_memory_desc_t a_md, a_bf16_md, b_md, bias_md, c_md;
    dnnl_matmul_desc_t desc;
    dnnl_dims_t a_dims = {s->m, s->k}, b_dims = {s->k, s->n}, c_dims = {s->m, s->n},
                bias_dims = {1, s->n};
    dnnl_dims_t a_strides = {s->a_m, s->a_k}, a_bf16_strides = {s->k, 1}, b_strides = {s->b_k, s->b_n},
                c_strides = {s->ldc, 1}, bias_strides = {s->n, 1};
    memset(p, 0, sizeof *p);
    TRY(dnnl_memory_desc_init_by_strides(&a_md, 2, a_dims, s->a_bf16 ? dnnl_bf16 : dnnl_f32,
                                         a_strides));
    TRY(dnnl_memory_desc_init_by_strides(&a_bf16_md, 2, a_dims, dnnl_bf16,
                                         s->a_bf16 ? a_strides : a_bf16_strides));
    TRY(dnnl_memory_desc_init_by_strides(&b_md, 2, b_dims, dnnl_bf16, b_strides));
    TRY(dnnl_memory_desc_init_by_strides(&bias_md, 2, bias_dims, dnnl_f32, bias_strides));
    TRY(dnnl_memory_desc_init_by_strides(&c_md, 2, c_dims, dnnl_f32, c_strides));
    if (!s->a_bf16) {
        TRY(dnnl_reorder_primitive_desc_create(&reorder_pd, &a_md, engine, &a_bf16_md, engine,
                                               NULL));
        TRY(dnnl_primitive_create(&p->reorder, reorder_pd));
    }
    TRY(dnnl_matmul_desc_init(&desc, &a_bf16_md, &b_md, s->bias ? &bias_md : NULL, &c_md));
    TRY(dnnl_primitive_desc_create(&matmul_pd, &desc, NULL, engine, NULL));
    TRY(dnnl_primitive_create(&p->matmul, matmul_pd));
    TRY(dnnl_memory_create(&p->a, &a_md, engine, DNNL_MEMORY_NONE));
    TRY(dnnl_memory_create(&p->a_bf16, &a_bf16_md, engine, DNNL_MEMORY_NONE));
    TRY(dnnl_memory_create(&p->b, &b_md, engine, DNNL_MEMORY_NONE));
    TRY(dnnl_memory_create(&p->bias, &bias_md, engine, DNNL_MEMORY_NONE));
    TRY(dnnl_memory_create(&p->c, &c_md, engine, DNNL_MEMORY_NONE));
    p->shape = *s;
    p->used = 1;
    dnnl_primitive_desc_destroy(reorder_pd);
    dnnl_primitive_desc_destroy(matmul_pd);
    return dnnl_success;
failed:
    dnnl_primitive_desc_destroy(reorder_pd);
    dnnl_primitive_desc_destroy(matmul_pd);
    release(p);
    return status;
}

/* The prepared product of shape `s` for this thread, made when it is not kept. */
static dnnl_status_t lookup(const struct shape *s, struct prepared **out) {
    for (int i = 0; i < KEPT; i++) {
        if (kept[i].used && memcmp(&kept[i].shape, s, sizeof *s) == 0) {
            *out = &kept[i];
            return dnnl_success;
        }
    }
    struct prepared *p = &kept[next_evicted];
    next_evicted = (next_evicted + 1) % KEPT;
    if (p->used)
        release(p);
    *out = p;
    return prepare(p, s);
}

int ace_onednn_matmul_bf16(int64_t m, int64_t n, int64_t k, const void *a, int a_bf16,
                           int64_t a_m, int64_t a_k, const uint16_t *b, int64_t b_k, int64_t b_n,
                           const float *bias, float *c, int64_t ldc) {
    dnnl_status_t status;
    struct prepared *p;
    struct shape s;
    pthread_once(&engine_once, make_engine);
    if (engine_status != dnnl_success)
        return (int)engine_status;
    if (!stream) {
        omp_set_num_threads(1);
        TRY(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
    }
    memset(&s, 0, sizeof s); /* the padding too: shapes are compared bytewise */
    s.m = m, s.n = n, s.k = k, s.a_m = a_m, s.a_k = a_k, s.b_k = b_k, s.b_n = b_n, s.ldc = ldc;
    s.bias = bias != NULL;
    s.a_bf16 = a_bf16 != 0;
    TRY(lookup(&s, &p));
    if (s.a_bf16) {
        TRY(dnnl_memory_set_data_handle(p->a_bf16, (void *)a));
    } else {
        size_t needed = (size_t)m * (size_t)k * 2;
        if (needed > scratch_bytes) {
            void *grown = realloc(scratch, needed);
            if (!grown)
                return (int)dnnl_out_of_memory;
            scratch = grown, scratch_bytes = needed;
        }
        TRY(dnnl_memory_set_data_handle(p->a_bf16, scratch));
        TRY(dnnl_memory_set_data_handle(p->a, (void *)a));
        dnnl_exec_arg_t reorder_args[2] = {{DNNL_ARG_FROM, p->a}, {DNNL_ARG_TO, p->a_bf16}};
        TRY(dnnl_primitive_execute(p->reorder, stream, 2, reorder_args));
    }
    TRY(dnnl_memory_set_data_handle(p->b, (void *)b));
    TRY(dnnl_memory_set_data_handle(p->c, c));
    if (bias)
        TRY(dnnl_memory_set_data_handle(p->bias, (void *)bias));
    dnnl_exec_arg_t matmul_args[4] = {{DNNL_ARG_SRC, p->a_bf16},
                                      {DNNL_ARG_WEIGHTS, p->b},
                                      {DNNL_ARG_DST, p->c},
                                      {DNNL_ARG_BIAS, p->bias}};
    TRY(dnnl_primitive_execute(p->matmul, stream, bias ? 4 : 3, matmul_args));
    TRY(dnnl_stream_wait(stream));
    return 0;
failed:
    return (int)status;
}
