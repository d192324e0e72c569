/* The PFR encoder's search (diffcodec/coders/pfr.py, search), compiled: for every chunk c,
 * n* = argmin_{n < cap_c} ln T_n - f_n, with T_n = E_0 + ... + E_n (Exp(1) arrivals) and
 * f_n = sum_i (lin_i - quad_i z_i) z_i over the chunk's dimensions, z the candidate's normals.
 * Every random number is the reference implementation's: Philox4x32-10 words, 16-bit halves
 * looked up in the shared normal table, 53-bit uniforms for the arrivals.  The search stops a
 * chunk once ln T_n - fmax_c >= the best value (no later candidate can win: "certified").
 * Only the encoder runs this; the decoder regenerates the chosen candidates in torch. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u

static inline void philox(uint32_t c[4], uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; r++) {
        if (r) { k0 += W0; k1 += W1; }
        uint64_t p0 = (uint64_t)M0 * c[0];
        uint64_t p1 = (uint64_t)M1 * c[2];
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

static inline double uniform53(uint32_t hi, uint32_t lo) {
    uint64_t k = ((uint64_t)(hi >> 5) << 26) | (uint64_t)(lo >> 6);
    if (k == 0) k = 1;
    return (double)k * 0x1p-53;
}

typedef struct {
    int64_t c0, c1;
    const int64_t *start; const double *lin, *quad; const int64_t *cap; const double *fmax;
    uint32_t key0, key1, word3_normal, word3_arrival;
    const double *table;
    int64_t *nstar; uint8_t *certified; int64_t evaluated;
} job_t;

/* dims of chunk c are positions start[c] .. start[c+1]-1 (chunk-major plan order);
 * the octet of position p is (p - start[c]) / 8, its lane (p - start[c]) % 8. */
static void search_range(job_t *j) {
    const int64_t *start = j->start, *cap = j->cap;
    const double *lin = j->lin, *quad = j->quad, *fmax = j->fmax, *table = j->table;
    uint32_t key0 = j->key0, key1 = j->key1, word3_normal = j->word3_normal, word3_arrival = j->word3_arrival;
    int64_t *nstar = j->nstar;
    uint8_t *certified = j->certified;
    int64_t total = 0;
    for (int64_t c = j->c0; c < j->c1; c++) {
        int64_t s = start[c], e = start[c + 1], dims = e - s;
        double best = INFINITY, arrivals = 0.0;
        int64_t pick = 0;
        uint8_t done = 0;
        for (int64_t n = 0; n < cap[c]; n++) {
            uint32_t ca[4] = {(uint32_t)n, (uint32_t)c, 0u, word3_arrival};
            philox(ca, key0, key1);
            arrivals += -log(uniform53(ca[0], ca[1]));
            double logt = log(arrivals);
            if (logt - fmax[c] >= best) { done = 1; break; }
            double f = 0.0;
            for (int64_t o = 0; o * 8 < dims; o++) {
                uint32_t w[4] = {(uint32_t)o, (uint32_t)n, (uint32_t)c, word3_normal};
                philox(w, key0, key1);
                int64_t base = s + o * 8, lanes = dims - o * 8 < 8 ? dims - o * 8 : 8;
                for (int64_t l = 0; l < lanes; l++) {
                    uint32_t h = (w[l >> 1] >> ((l & 1) * 16)) & 0xFFFFu;
                    double z = table[h];
                    f += (lin[base + l] - quad[base + l] * z) * z;
                }
            }
            total += dims;
            double v = logt - f;
            if (v < best) { best = v; pick = n; }
        }
        nstar[c] = pick;
        certified[c] = done;
    }
    j->evaluated = total;
}

static void *run_job(void *arg) { search_range((job_t *)arg); return 0; }

/* The chunks are independent: ``threads`` threads take contiguous ranges of them. */
void pfr_search(int64_t num_chunks, const int64_t *start, const double *lin, const double *quad,
                const int64_t *cap, const double *fmax, uint32_t key0, uint32_t key1,
                uint32_t word3_normal, uint32_t word3_arrival, const double *table,
                int64_t *nstar, uint8_t *certified, int64_t *evaluated, int32_t threads) {
    enum { MAX_THREADS = 64 };
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > num_chunks) threads = num_chunks > 0 ? (int32_t)num_chunks : 1;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    /* split by dimensions, not chunks, so that every thread gets about the same work */
    int64_t dims = start[num_chunks] - start[0], c = 0;
    for (int32_t t = 0; t < threads; t++) {
        int64_t target = start[0] + dims * (t + 1) / threads, c1 = c;
        while (c1 < num_chunks && (start[c1 + 1] <= target || t == threads - 1)) c1++;
        job_t jb = {c, c1, start, lin, quad, cap, fmax, key0, key1, word3_normal, word3_arrival, table,
                    nstar, certified, 0};
        jobs[t] = jb;
        c = c1;
    }
    int32_t started = 0;
    for (int32_t t = 1; t < threads; t++)
        if (pthread_create(&ids[t], 0, run_job, &jobs[t]) == 0) started = t; else { search_range(&jobs[t]); }
    search_range(&jobs[0]);
    for (int32_t t = 1; t <= started; t++) pthread_join(ids[t], 0);
    int64_t total = 0;
    for (int32_t t = 0; t < threads; t++) total += jobs[t].evaluated;
    *evaluated = total;
}
