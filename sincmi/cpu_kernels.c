/* CPU kernels for the SincNet encoder's first block and the MLP critic
 * (built and bound by sincmi/cpu_kernels.py, used by sincmi/fast_ops.py).
 *
 * The sinc layer's output is 80 x 2950 samples per chunk; PyTorch reduces it
 * with |.|, a max-pool with indices, a gather of the winners' signs, then a
 * LayerNorm, gain and bias and LeakyReLU, and in the backward pass the same in
 * reverse with a scatter into a zero tensor: a dozen passes over the largest
 * tensor of the network, and a max with indices over windows of 3 that does
 * not vectorise. Here each direction is one vectorised pass.
 *
 * Layout: `rows` rows of `time` samples (y, grad_y) or of `pooled` windows
 * (out, code, grad_out), all contiguous. Window m of a row covers samples
 * [m * pool, (m + 1) * pool). code = (winner's position in its window + 1) *
 * sign(winner), so 0 when the output is 0 (where |.| has no gradient). Ties
 * go to the first sample of the window (as in max_pool1d); a window holding a
 * NaN outputs NaN.
 */
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

/* Rows (channels) produced together before a channels-last copy: 16 floats
 * are one 64-byte cache line. */
#define TILE_ROWS 16

/* Copies a rows x cols row-major block (src, row stride src_rs) transposed:
 * dst[j * dst_rs + i] = src[i * src_rs + j]. With AVX-512, 16 x 16 tiles are
 * transposed in registers (a scalar copy would make each of the 16 loads per
 * stored line a separate gather). */
#define TRANSPOSE_SCALAR(T, SUFFIX)                                                      \
static void transpose_scalar_##SUFFIX(const T *src, int64_t src_rs, int64_t rows,       \
                                      int64_t cols, T *dst, int64_t dst_rs) {          \
    for (int64_t j = 0; j < cols; j++)                                                 \
        for (int64_t i = 0; i < rows; i++)                                             \
            dst[j * dst_rs + i] = src[i * src_rs + j];                                 \
}
TRANSPOSE_SCALAR(float, f32)
TRANSPOSE_SCALAR(double, f64)

#if defined(__AVX512F__)
#include <immintrin.h>
static void transpose_tile_16(const float *src, int64_t src_rs, float *dst, int64_t dst_rs) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * src_rs);
    /* Pairs of rows interleaved, then quartets: u[4k + c] holds, in 128-bit
     * lane l, column 4l + c of rows 4k..4k+3. */
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int k = 0; k < 4; k++) {
        __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 2]);
        __m512d c = _mm512_castps_pd(t[4 * k + 1]), d = _mm512_castps_pd(t[4 * k + 3]);
        r[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    /* Then a 4 x 4 transpose of 128-bit lanes for each c. */
    for (int c = 0; c < 4; c++) {
        __m512 p = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
        __m512 q = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
        __m512 s = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
        __m512 u = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
        _mm512_storeu_ps(dst + (0 + c) * dst_rs, _mm512_shuffle_f32x4(p, s, 0x88));
        _mm512_storeu_ps(dst + (4 + c) * dst_rs, _mm512_shuffle_f32x4(p, s, 0xDD));
        _mm512_storeu_ps(dst + (8 + c) * dst_rs, _mm512_shuffle_f32x4(q, u, 0x88));
        _mm512_storeu_ps(dst + (12 + c) * dst_rs, _mm512_shuffle_f32x4(q, u, 0xDD));
    }
}
static void transpose_f32(const float *src, int64_t src_rs, int64_t rows, int64_t cols,
                          float *dst, int64_t dst_rs) {
    int64_t full_rows = rows / 16 * 16, full_cols = cols / 16 * 16;
    for (int64_t i = 0; i < full_rows; i += 16)
        for (int64_t j = 0; j < full_cols; j += 16)
            transpose_tile_16(src + i * src_rs + j, src_rs, dst + j * dst_rs + i, dst_rs);
    if (full_cols < cols)
        transpose_scalar_f32(src + full_cols, src_rs, full_rows, cols - full_cols,
                             dst + full_cols * dst_rs, dst_rs);
    if (full_rows < rows)
        transpose_scalar_f32(src + full_rows * src_rs, src_rs, rows - full_rows, cols,
                             dst + full_rows, dst_rs);
}
#else
#define transpose_f32 transpose_scalar_f32
#endif
#define transpose_f64 transpose_scalar_f64

/* One row, forward. Windows of 3 (SincNet's) are written out so that the
 * compiler vectorises them; other sizes take the general loop. */
#define POOL_ROW(T, SUFFIX)                                                              \
static void pool_row_##SUFFIX(const T *y, int64_t pooled, int64_t pool, T *out,        \
                              int8_t *code) {                                          \
    if (pool == 3) {                                                                   \
        T signed_position[pooled];                                                     \
        _Pragma("omp simd")                                                            \
        for (int64_t m = 0; m < pooled; m++) {                                         \
            T v0 = y[3 * m], v1 = y[3 * m + 1], v2 = y[3 * m + 2];                     \
            T a0 = v0 < 0 ? -v0 : v0, a1 = v1 < 0 ? -v1 : v1, a2 = v2 < 0 ? -v2 : v2;  \
            int take1 = a1 > a0;                                                       \
            T best = take1 ? a1 : a0, value = take1 ? v1 : v0;                         \
            int take2 = a2 > best;                                                     \
            int position = take2 ? 3 : (take1 ? 2 : 1);                                \
            best = take2 ? a2 : best;                                                  \
            value = take2 ? v2 : value;                                                \
            int nan = (a0 != a0) | (a1 != a1) | (a2 != a2);                            \
            out[m] = nan ? a0 + a1 + a2 : best;                                        \
            signed_position[m] = (T)(((value > 0) - (value < 0)) * position);          \
        }                                                                              \
        if (code)                                                                      \
            for (int64_t m = 0; m < pooled; m++) code[m] = (int8_t)signed_position[m]; \
        return;                                                                        \
    }                                                                                  \
    for (int64_t m = 0; m < pooled; m++) {                                             \
        const T *w = y + m * pool;                                                     \
        T best = w[0] < 0 ? -w[0] : w[0], value = w[0];                                \
        int position = 1;                                                              \
        for (int p = 1; p < pool; p++) {                                               \
            T a = w[p] < 0 ? -w[p] : w[p];                                             \
            if (a > best || (a != a && best == best)) {                                \
                best = a;                                                              \
                value = w[p];                                                          \
                position = p + 1;                                                      \
            }                                                                          \
        }                                                                              \
        out[m] = best;                                                                 \
        if (code) code[m] = (int8_t)(((value > 0) - (value < 0)) * position);          \
    }                                                                                  \
}

/* One row, backward: each window's gradient goes to its winner, times its sign. */
#define POOL_BACKWARD_ROW(T, SUFFIX)                                                     \
static void pool_backward_row_##SUFFIX(const int8_t *code, const T *grad_out,          \
                                       int64_t pooled, int64_t pool, int64_t time,     \
                                       T *grad_y) {                                    \
    if (pool == 3) {                                                                   \
        _Pragma("omp simd")                                                            \
        for (int64_t m = 0; m < pooled; m++) {                                         \
            int k = code[m];                                                           \
            T value = k < 0 ? -grad_out[m] : grad_out[m];                              \
            grad_y[3 * m] = (k == 1) | (k == -1) ? value : (T)0;                       \
            grad_y[3 * m + 1] = (k == 2) | (k == -2) ? value : (T)0;                   \
            grad_y[3 * m + 2] = (k == 3) | (k == -3) ? value : (T)0;                   \
        }                                                                              \
    } else {                                                                           \
        for (int64_t m = 0; m < pooled; m++) {                                         \
            int k = code[m];                                                           \
            int position = (k < 0 ? -k : k) - 1;                                       \
            T value = k < 0 ? -grad_out[m] : grad_out[m];                              \
            for (int p = 0; p < pool; p++)                                             \
                grad_y[m * pool + p] = p == position ? value : (T)0;                   \
        }                                                                              \
    }                                                                                  \
    for (int64_t t = pooled * pool; t < time; t++)                                     \
        grad_y[t] = 0;                                                                 \
}

/* Pool a group of rows (one row: norm over time; a whole chunk: over channels
 * and time), then LayerNorm over the group, per-position gain and bias, and
 * LeakyReLU. xhat (the normalised values) is row-major; row r of the group's
 * output starts at out + r * out_rs, its elements contiguous. */
#define POOL_NORM_GROUP(T, SUFFIX)                                                       \
static void pool_norm_group_##SUFFIX(const T *y, int64_t first_row, int64_t group_rows, \
        int64_t channels, int64_t time, int64_t pooled, int64_t pool, const T *gain,    \
        const T *bias, double slope, double eps, T *out, int64_t out_rs, T *xhat,       \
        T *rstd_out, int8_t *code) {                                                     \
    int64_t n = group_rows * pooled;                                                     \
    /* Inference (xhat NULL): the pooled values are normalised in `out` itself. */     \
    T *x = xhat ? xhat + first_row * pooled : out;                                       \
    int64_t x_rs = xhat ? pooled : out_rs;                                               \
    for (int64_t r = 0; r < group_rows; r++)                                             \
        pool_row_##SUFFIX(y + (first_row + r) * time, pooled, pool, x + r * x_rs,       \
                          code ? code + (first_row + r) * pooled : NULL);               \
    double sum = 0, squares = 0;                                                         \
    for (int64_t r = 0; r < group_rows; r++) {                                           \
        const T *xr = x + r * x_rs;                                                      \
        _Pragma("omp simd reduction(+:sum)")                                             \
        for (int64_t m = 0; m < pooled; m++) sum += xr[m];                               \
    }                                                                                    \
    double mean = sum / n;                                                               \
    for (int64_t r = 0; r < group_rows; r++) {                                           \
        const T *xr = x + r * x_rs;                                                      \
        _Pragma("omp simd reduction(+:squares)")                                         \
        for (int64_t m = 0; m < pooled; m++) squares += (xr[m] - mean) * (xr[m] - mean); \
    }                                                                                    \
    T rstd = (T)(1.0 / __builtin_sqrt(squares / n + eps));                               \
    T mu = (T)mean;                                                                      \
    *rstd_out = rstd;                                                                    \
    for (int64_t r = 0; r < group_rows; r++) {                                           \
        int64_t row = first_row + r, c = row % channels;                                 \
        const T *g = gain + c * pooled, *b = bias + c * pooled;                          \
        T *xr = x + r * x_rs;                                                            \
        T *o = out + r * out_rs;                                                         \
        _Pragma("omp simd")                                                              \
        for (int64_t m = 0; m < pooled; m++) {                                           \
            T normed = (xr[m] - mu) * rstd;                                              \
            T z = normed * g[m] + b[m];                                                  \
            if (xhat) xr[m] = normed;                                                    \
            o[m] = z > 0 ? z : (T)slope * z;                                             \
        }                                                                                \
    }                                                                                    \
}

/* Backward of pool_norm_group: grad_out -> dz (pre-activation gradient, for the
 * gain and bias gradients) and grad_y (the gradient of the sinc output). */
#define POOL_NORM_GROUP_BACKWARD(T, SUFFIX)                                              \
static void pool_norm_group_backward_##SUFFIX(const T *grad_group, int64_t grad_rs,    \
        const T *xhat,                                                                   \
        T rstd, const int8_t *code, const T *gain, const T *bias, int64_t first_row,    \
        int64_t group_rows, int64_t channels, int64_t time, int64_t pooled,             \
        int64_t pool, double slope, T *dz, T *grad_y, T *scratch) {                      \
    int64_t n = group_rows * pooled;                                                     \
    double s1 = 0, s2 = 0;                                                               \
    for (int64_t r = 0; r < group_rows; r++) {                                           \
        int64_t row = first_row + r, c = row % channels;                                 \
        const T *g = gain + c * pooled, *b = bias + c * pooled;                          \
        const T *go = grad_group + r * grad_rs;                                          \
        const T *xr = xhat + row * pooled;                                               \
        T *d = dz + row * pooled;                                                        \
        T t1 = 0, t2 = 0;                                                                \
        _Pragma("omp simd reduction(+:t1,t2)")                                           \
        for (int64_t m = 0; m < pooled; m++) {                                           \
            T z = xr[m] * g[m] + b[m];                                                   \
            T dzm = z > 0 ? go[m] : (T)slope * go[m];                                    \
            T dx = dzm * g[m];                                                           \
            d[m] = dzm;                                                                  \
            t1 += dx;                                                                    \
            t2 += dx * xr[m];                                                            \
        }                                                                                \
        s1 += t1;                                                                        \
        s2 += t2;                                                                        \
    }                                                                                    \
    T m1 = (T)(s1 / n), m2 = (T)(s2 / n);                                                \
    for (int64_t r = 0; r < group_rows; r++) {                                           \
        int64_t row = first_row + r, c = row % channels;                                 \
        const T *g = gain + c * pooled, *xr = xhat + row * pooled, *d = dz + row * pooled; \
        _Pragma("omp simd")                                                              \
        for (int64_t m = 0; m < pooled; m++)                                             \
            scratch[m] = rstd * (d[m] * g[m] - m1 - xr[m] * m2);                         \
        pool_backward_row_##SUFFIX(code + row * pooled, scratch, pooled, pool, time,     \
                                   grad_y + row * time);                                 \
    }                                                                                    \
}

/* A thread whose working memory could not be allocated records it in the
 * kernel's `failed` status and skips its iterations; the caller raises. */
#define NOTE_FAILURE(ok)                                                                 \
    if (!(ok)) {                                                                         \
        _Pragma("omp atomic write")                                                      \
        failed = 1;                                                                      \
    }

/* The exported functions: rows (or groups of rows) in parallel. */
#define POOL_NORM_KERNELS(T, SUFFIX)                                                     \
POOL_ROW(T, SUFFIX)                                                                      \
POOL_BACKWARD_ROW(T, SUFFIX)                                                             \
POOL_NORM_GROUP(T, SUFFIX)                                                               \
POOL_NORM_GROUP_BACKWARD(T, SUFFIX)                                                      \
/* `out` has element strides out_cs (channel) and out_ms (time) within a chunk,  \
 * chunks contiguous. Written channels-last (out_ms = channels), a row's outputs   \
 * are channels apart: each store would touch its own cache line. The rows are    \
 * then produced TILE_ROWS (or a group) at a time into a row-major buffer and     \
 * transposed out (in registers with AVX-512). For inference, xhat and code may \
 * be NULL: nothing is kept for a backward pass. */                                \
int pool_norm_act_##SUFFIX(const T *y, int64_t groups, int64_t group_rows,            \
        int64_t channels, int64_t time, int64_t pooled, int64_t pool, const T *gain,    \
        const T *bias, double slope, double eps, T *out, int64_t out_cs, int64_t out_ms, \
        T *xhat, T *rstd, int8_t *code, int threads) {                                   \
    int failed = 0; /* an allocation failed: the caller raises MemoryError */            \
    if (out_ms == 1) {                                                                   \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")               \
        for (int64_t k = 0; k < groups; k++) {                                           \
            int64_t row = k * group_rows;                                                \
            T *o = out + (row / channels) * channels * pooled + (row % channels) * out_cs; \
            pool_norm_group_##SUFFIX(y, row, group_rows, channels, time, pooled, pool,   \
                                     gain, bias, slope, eps, o, out_cs, xhat,            \
                                     rstd + k, code);                                    \
        }                                                                                \
        return 0;                                                                          \
    }                                                                                    \
    int64_t unit = group_rows > TILE_ROWS ? group_rows : TILE_ROWS;                      \
    int64_t units = (channels + unit - 1) / unit, batch = groups * group_rows / channels; \
    _Pragma("omp parallel num_threads(threads)")                                        \
    {                                                                                    \
        T *buffer = (T *)malloc(sizeof(T) * unit * pooled);                              \
        int ok = buffer != NULL;                                                         \
        NOTE_FAILURE(ok)                                                                 \
        _Pragma("omp for schedule(static)")                                             \
        for (int64_t u = 0; u < batch * units; u++) {                                    \
            if (!ok) continue;                                                           \
            int64_t b = u / units, c0 = (u % units) * unit;                              \
            int64_t rows = channels - c0 < unit ? channels - c0 : unit;                  \
            for (int64_t r = 0; r < rows; r += group_rows) {                             \
                int64_t row = b * channels + c0 + r;                                     \
                pool_norm_group_##SUFFIX(y, row, group_rows, channels, time, pooled,     \
                                         pool, gain, bias, slope, eps, buffer + r * pooled,\
                                         pooled, xhat, rstd + row / group_rows, code);   \
            }                                                                            \
            T *o = out + b * channels * pooled + c0 * out_cs;                            \
            if (out_cs == 1)                                                             \
                transpose_##SUFFIX(buffer, pooled, rows, pooled, o, out_ms);             \
            else                                                                         \
                for (int64_t m = 0; m < pooled; m++)                                     \
                    for (int64_t r = 0; r < rows; r++)                                   \
                        o[m * out_ms + r * out_cs] = buffer[r * pooled + m];             \
        }                                                                                \
        free(buffer);                                                                    \
    }                                                                                    \
    return failed;                                                                       \
}                                                                                        \
int pool_norm_act_backward_##SUFFIX(const T *grad_out, int64_t grad_cs, int64_t grad_ms,\
        const T *xhat, const T *rstd,                                                    \
        const int8_t *code, const T *gain, const T *bias, int64_t groups,               \
        int64_t group_rows, int64_t channels, int64_t time, int64_t pooled,             \
        int64_t pool, double slope, T *dz, T *grad_y, int threads) {                     \
    int failed = 0; /* an allocation failed: the caller raises MemoryError */            \
    /* TILE_ROWS channels (or a group) at a time. A channels-last grad_out       \
     * (grad_cs == 1) is first transposed into a row-major tile, so that every     \
     * row is read contiguously; a row-major one (grad_ms == 1) is read in place. */\
    int64_t unit = group_rows > TILE_ROWS ? group_rows : TILE_ROWS;                      \
    int64_t units = (channels + unit - 1) / unit, batch = groups * group_rows / channels; \
    _Pragma("omp parallel num_threads(threads)")                                        \
    {                                                                                    \
        T *scratch = (T *)malloc(sizeof(T) * pooled * (unit + 1)), *tile = scratch + pooled; \
        int ok = scratch != NULL;                                                        \
        NOTE_FAILURE(ok)                                                                 \
        _Pragma("omp for schedule(static)")                                             \
        for (int64_t u = 0; u < batch * units; u++) {                                    \
            if (!ok) continue;                                                           \
            int64_t b = u / units, c0 = (u % units) * unit;                              \
            int64_t rows = channels - c0 < unit ? channels - c0 : unit;                  \
            const T *go = grad_out + b * channels * pooled + c0 * grad_cs;               \
            int64_t go_rs = grad_cs;                                                     \
            if (grad_ms != 1) {                                                          \
                transpose_##SUFFIX(go, grad_ms, pooled, rows, tile, pooled);             \
                go = tile;                                                               \
                go_rs = pooled;                                                          \
            }                                                                            \
            for (int64_t r = 0; r < rows; r += group_rows) {                             \
                int64_t row = b * channels + c0 + r;                                     \
                pool_norm_group_backward_##SUFFIX(go + r * go_rs, go_rs, xhat,           \
                    rstd[row / group_rows], code, gain, bias, row, group_rows, channels, \
                    time, pooled, pool, slope, dz, grad_y, scratch);                     \
            }                                                                            \
        }                                                                                \
        free(scratch);                                                                   \
    }                                                                                    \
    return failed;                                                                       \
}

POOL_NORM_KERNELS(float, f32)
POOL_NORM_KERNELS(double, f64)

/* The sinc layer's gradients from the spectra (sincmi.fast_ops._SpectralGradients).
 * The layer is y = x (*) h (a correlation), computed as irfft(X conj(H)); for
 * the gradient spectra G (n x channels x bins) of y:
 *   grad_x[b][f] = sum_c G[b][c][f] H[c][f]           (written, if grad_x)
 *   grad_h[c][f] += sum_b conj(G[b][c][f]) X[b][f]    (accumulated, if grad_h)
 * PyTorch forms both products as n x channels x bins temporaries and then sums
 * them; here G is read once. Complex values are interleaved (re, im), H is
 * given as its conjugate (what the forward pass keeps). Bins are split into
 * blocks, one per thread at a time, so that no two threads write the same
 * output. */
#define SPECTRAL_BINS 64
#define SPECTRAL_KERNELS(T, SUFFIX)                                                      \
void spectral_gradients_##SUFFIX(const T *g, const T *h_conj, const T *x, int64_t n,    \
        int64_t channels, int64_t bins, T *grad_x, T *grad_h, int threads) {             \
    int64_t blocks = (bins + SPECTRAL_BINS - 1) / SPECTRAL_BINS;                         \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                   \
    for (int64_t k = 0; k < blocks; k++) {                                               \
        int64_t f0 = k * SPECTRAL_BINS;                                                  \
        int64_t f1 = f0 + SPECTRAL_BINS < bins ? f0 + SPECTRAL_BINS : bins;              \
        for (int64_t b = 0; b < n; b++) {                                                \
            T sum_re[SPECTRAL_BINS] = {0}, sum_im[SPECTRAL_BINS] = {0};                  \
            const T *xb = x + 2 * b * bins;                                              \
            for (int64_t c = 0; c < channels; c++) {                                     \
                const T *gc = g + 2 * (b * channels + c) * bins, *hc = h_conj + 2 * c * bins; \
                T *ghc = grad_h ? grad_h + 2 * c * bins : NULL;                          \
                if (grad_x) {                                                            \
                    _Pragma("omp simd")                                                  \
                    for (int64_t f = f0; f < f1; f++) { /* G * H, H = conj(h_conj) */    \
                        T gr = gc[2 * f], gi = gc[2 * f + 1];                            \
                        T hr = hc[2 * f], hi = -hc[2 * f + 1];                           \
                        sum_re[f - f0] += gr * hr - gi * hi;                             \
                        sum_im[f - f0] += gr * hi + gi * hr;                             \
                    }                                                                    \
                }                                                                        \
                if (ghc) {                                                               \
                    _Pragma("omp simd")                                                  \
                    for (int64_t f = f0; f < f1; f++) { /* conj(G) * X */                \
                        T gr = gc[2 * f], gi = gc[2 * f + 1];                            \
                        T xr = xb[2 * f], xi = xb[2 * f + 1];                            \
                        ghc[2 * f] += gr * xr + gi * xi;                                 \
                        ghc[2 * f + 1] += gr * xi - gi * xr;                             \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
            if (grad_x)                                                                  \
                for (int64_t f = f0; f < f1; f++) {                                      \
                    grad_x[2 * (b * bins + f)] = sum_re[f - f0];                         \
                    grad_x[2 * (b * bins + f) + 1] = sum_im[f - f0];                     \
                }                                                                        \
        }                                                                                \
    }                                                                                    \
}

SPECTRAL_KERNELS(float, f32)
SPECTRAL_KERNELS(double, f64)

/* The MLP critic's grid (sincmi.fast_ops.mlp_critic_grid): for every anchor i
 * and candidate j, logit[i][j] = sum_h w[h] * leaky_relu(p[i][h] + q[j][h]),
 * where p and q are the two halves of the first layer applied to each
 * embedding once. PyTorch materialises the (rows, cols, hidden) tensor three
 * times over (sum, activation, gradient); here it is never stored. */
#define CRITIC_KERNELS(T, SUFFIX)                                                        \
void mlp_grid_##SUFFIX(const T *p, const T *q, const T *w, int64_t rows, int64_t cols, \
                       int64_t hidden, double slope, T *logits, int threads) {          \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                   \
    for (int64_t i = 0; i < rows; i++) {                                                 \
        const T *pi = p + i * hidden;                                                    \
        for (int64_t j = 0; j < cols; j++) {                                             \
            const T *qj = q + j * hidden;                                                \
            T sum = 0;                                                                   \
            _Pragma("omp simd reduction(+:sum)")                                         \
            for (int64_t h = 0; h < hidden; h++) {                                       \
                T t = pi[h] + qj[h];                                                     \
                sum += w[h] * (t > 0 ? t : (T)slope * t);                                \
            }                                                                            \
            logits[i * cols + j] = sum;                                                  \
        }                                                                                \
    }                                                                                    \
}                                                                                        \
/* grad_q_parts and grad_w_parts hold one partial sum per thread (the caller  \
 * adds them up): threads x cols x hidden and threads x hidden. */                       \
void mlp_grid_backward_##SUFFIX(const T *p, const T *q, const T *w, const T *grad,     \
                                int64_t rows, int64_t cols, int64_t hidden,             \
                                double slope, T *grad_p, T *grad_q_parts,                \
                                T *grad_w_parts, int threads) {                          \
    _Pragma("omp parallel num_threads(threads)")                                        \
    {                                                                                    \
        T *gq = grad_q_parts + (int64_t)omp_get_thread_num() * cols * hidden;            \
        T *gw = grad_w_parts + (int64_t)omp_get_thread_num() * hidden;                   \
        for (int64_t k = 0; k < cols * hidden; k++) gq[k] = 0;                           \
        for (int64_t h = 0; h < hidden; h++) gw[h] = 0;                                  \
        _Pragma("omp for schedule(static)")                                             \
        for (int64_t i = 0; i < rows; i++) {                                             \
            const T *pi = p + i * hidden;                                                \
            T *gp = grad_p + i * hidden;                                                 \
            for (int64_t h = 0; h < hidden; h++) gp[h] = 0;                              \
            for (int64_t j = 0; j < cols; j++) {                                         \
                T g = grad[i * cols + j];                                                \
                if (g == 0) continue;                                                    \
                const T *qj = q + j * hidden;                                            \
                T *gqj = gq + j * hidden;                                                \
                _Pragma("omp simd")                                                      \
                for (int64_t h = 0; h < hidden; h++) {                                   \
                    T t = pi[h] + qj[h];                                                 \
                    T dt = (t > 0 ? g : (T)slope * g) * w[h];                            \
                    gp[h] += dt;                                                         \
                    gqj[h] += dt;                                                        \
                    gw[h] += g * (t > 0 ? t : (T)slope * t);                             \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
}

CRITIC_KERNELS(float, f32)
CRITIC_KERNELS(double, f64)

/* The ordinary convolution blocks' tail (sincmi.fast_ops.conv_block_tail):
 * max-pool over time (no |.|), LayerNorm (each channel over time, or the whole
 * chunk when `whole`), per-position gain and bias, LeakyReLU, on the
 * channels-last output of a convolution. Everything is channels-last, so every
 * loop runs over contiguous channels:
 *   y, grad_y       chunks x time x channels
 *   out, xhat, dz   chunks x pooled x channels (and gain_t, bias_t: pooled x channels)
 *   code            chunks x pooled x channels int8: the winner's position in its window
 *   rstd            chunks x channels (or chunks x 1 when `whole`)
 * PyTorch does this as a max-pool with indices, a copy to the 1-D layout, a
 * LayerNorm, a fused gain/bias, a LeakyReLU and a copy back to channels-last
 * for the next convolution (and the same again backward). A window's first
 * maximum wins, a NaN wins, as in max_pool2d. With xhat NULL (inference) the
 * pooled values are kept in `out` and no codes are stored (code NULL). */
#define CL_KERNELS(T, SUFFIX)                                                            \
int cl_pool_norm_act_##SUFFIX(const T *y, int64_t batch, int64_t time, int64_t channels,\
        int64_t pooled, int64_t pool, int whole, const T *gain_t, const T *bias_t,      \
        double slope, double eps, T *out, T *xhat, T *rstd, int8_t *code, int threads) {  \
    int failed = 0; /* an allocation failed: the caller raises MemoryError */            \
    _Pragma("omp parallel num_threads(threads)")                                        \
    {                                                                                    \
        double *sums = (double *)malloc(sizeof(double) * channels * 2);                  \
        double *squares = sums + channels;                                               \
        T *mean = (T *)malloc(sizeof(T) * channels * 3), *scale = mean + channels;       \
        T *position = scale + channels;                                                  \
        int keep = xhat != NULL;                                                         \
        int ok = mean != NULL && sums != NULL;                                           \
        NOTE_FAILURE(ok)                                                                 \
        _Pragma("omp for schedule(static)")                                             \
        for (int64_t b = 0; b < batch; b++) {                                            \
            if (!ok) continue;                                                           \
            const T *yb = y + b * time * channels;                                       \
            T *xb = (xhat ? xhat : out) + b * pooled * channels;                         \
            T *ob = out + b * pooled * channels;                                         \
            for (int64_t c = 0; c < channels; c++) sums[c] = squares[c] = 0;             \
            for (int64_t m = 0; m < pooled; m++) {                                       \
                const T *w = yb + m * pool * channels;                                   \
                T *x = xb + m * channels;                                                \
                _Pragma("omp simd")                                                      \
                for (int64_t c = 0; c < channels; c++) x[c] = w[c];                      \
                if (code) {                                                              \
                    /* Positions tracked as T (int8 lanes would stop the vectorising). */ \
                    int8_t *k = code + (b * pooled + m) * channels;                      \
                    for (int64_t c = 0; c < channels; c++) position[c] = 0;              \
                    for (int64_t p = 1; p < pool; p++) {                                 \
                        const T *wp = w + p * channels;                                  \
                        _Pragma("omp simd")                                              \
                        for (int64_t c = 0; c < channels; c++) {                         \
                            T v = wp[c];                                                 \
                            int take = (v > x[c]) | (v != v);                            \
                            x[c] = take ? v : x[c];                                      \
                            position[c] = take ? (T)p : position[c];                     \
                        }                                                                \
                    }                                                                    \
                    for (int64_t c = 0; c < channels; c++) k[c] = (int8_t)position[c];   \
                } else {                                                                 \
                    for (int64_t p = 1; p < pool; p++) {                                 \
                        const T *wp = w + p * channels;                                  \
                        _Pragma("omp simd")                                              \
                        for (int64_t c = 0; c < channels; c++) {                         \
                            T v = wp[c];                                                 \
                            x[c] = (v > x[c]) | (v != v) ? v : x[c];                     \
                        }                                                                \
                    }                                                                    \
                }                                                                        \
                _Pragma("omp simd")                                                      \
                for (int64_t c = 0; c < channels; c++) sums[c] += x[c];                  \
            }                                                                            \
            double n = whole ? (double)pooled * channels : (double)pooled, total = 0;    \
            if (whole) { for (int64_t c = 0; c < channels; c++) total += sums[c]; }      \
            for (int64_t c = 0; c < channels; c++)                                       \
                mean[c] = (T)((whole ? total : sums[c]) / n);                            \
            for (int64_t m = 0; m < pooled; m++) {                                       \
                const T *x = xb + m * channels;                                          \
                _Pragma("omp simd")                                                      \
                for (int64_t c = 0; c < channels; c++) {                                 \
                    double d = (double)x[c] - (double)mean[c];                           \
                    squares[c] += d * d;                                                 \
                }                                                                        \
            }                                                                            \
            total = 0;                                                                   \
            if (whole) { for (int64_t c = 0; c < channels; c++) total += squares[c]; }   \
            for (int64_t c = 0; c < channels; c++)                                       \
                scale[c] = (T)(1.0 / __builtin_sqrt((whole ? total : squares[c]) / n + eps)); \
            if (rstd) {                                                                  \
                if (whole) rstd[b] = scale[0];                                           \
                else for (int64_t c = 0; c < channels; c++) rstd[b * channels + c] = scale[c]; \
            }                                                                            \
            for (int64_t m = 0; m < pooled; m++) {                                       \
                T *x = xb + m * channels, *o = ob + m * channels;                        \
                const T *g = gain_t + m * channels, *bb = bias_t + m * channels;         \
                _Pragma("omp simd")                                                      \
                for (int64_t c = 0; c < channels; c++) {                                 \
                    T normed = (x[c] - mean[c]) * scale[c];                              \
                    T z = normed * g[c] + bb[c];                                         \
                    if (keep) x[c] = normed;                                             \
                    o[c] = z > 0 ? z : (T)slope * z;                                     \
                }                                                                        \
            }                                                                            \
        }                                                                                \
        free(sums);                                                                      \
        free(mean);                                                                      \
    }                                                                                    \
    return failed;                                                                       \
}                                                                                        \
/* Backward: grad_out (chunks x pooled x channels) -> grad_y (chunks x time x   \
 * channels), and one partial gain and bias gradient per thread (threads x      \
 * pooled x channels each; the caller adds them up). */                          \
int cl_pool_norm_act_backward_##SUFFIX(const T *grad_out, const T *xhat, const T *rstd,\
        const int8_t *code, const T *gain_t, const T *bias_t, int64_t batch, int64_t time,\
        int64_t channels, int64_t pooled, int64_t pool, int whole, double slope,         \
        T *grad_y, T *grad_gain_parts, T *grad_bias_parts, int threads) {                \
    int failed = 0; /* an allocation failed: the caller raises MemoryError */            \
    int64_t size = pooled * channels;                                                    \
    _Pragma("omp parallel num_threads(threads)")                                        \
    {                                                                                    \
        T *gg = grad_gain_parts + (int64_t)omp_get_thread_num() * size;                  \
        T *gb = grad_bias_parts + (int64_t)omp_get_thread_num() * size;                  \
        for (int64_t i = 0; i < size; i++) gg[i] = gb[i] = 0;                            \
        double *s1 = (double *)malloc(sizeof(double) * channels * 2), *s2 = s1 + channels; \
        T *m1 = (T *)malloc(sizeof(T) * channels * 4), *m2 = m1 + channels, *r = m2 + channels; \
        T *position = r + channels;                                                      \
        T *dx = (T *)malloc(sizeof(T) * size);                                           \
        int ok = dx != NULL && m1 != NULL && s1 != NULL;                                 \
        NOTE_FAILURE(ok)                                                                 \
        _Pragma("omp for schedule(static)")                                             \
        for (int64_t b = 0; b < batch; b++) {                                            \
            if (!ok) continue;                                                           \
            const T *go = grad_out + b * size, *xb = xhat + b * size;                    \
            for (int64_t c = 0; c < channels; c++) s1[c] = s2[c] = 0;                    \
            for (int64_t m = 0; m < pooled; m++) {                                       \
                const T *g = gain_t + m * channels, *bb = bias_t + m * channels;         \
                const T *x = xb + m * channels, *gom = go + m * channels;                \
                T *d = dx + m * channels, *ggm = gg + m * channels, *gbm = gb + m * channels; \
                _Pragma("omp simd")                                                      \
                for (int64_t c = 0; c < channels; c++) {                                 \
                    T z = x[c] * g[c] + bb[c];                                           \
                    T dz = z > 0 ? gom[c] : (T)slope * gom[c];                           \
                    T dxhat = dz * g[c];                                                 \
                    ggm[c] += dz * x[c];                                                 \
                    gbm[c] += dz;                                                        \
                    d[c] = dxhat;                                                        \
                    s1[c] += dxhat;                                                      \
                    s2[c] += dxhat * x[c];                                               \
                }                                                                        \
            }                                                                            \
            double n = whole ? (double)size : (double)pooled, t1 = 0, t2 = 0;            \
            if (whole) for (int64_t c = 0; c < channels; c++) { t1 += s1[c]; t2 += s2[c]; } \
            for (int64_t c = 0; c < channels; c++) {                                     \
                m1[c] = (T)((whole ? t1 : s1[c]) / n);                                   \
                m2[c] = (T)((whole ? t2 : s2[c]) / n);                                   \
                r[c] = whole ? rstd[b] : rstd[b * channels + c];                         \
            }                                                                            \
            T *gyb = grad_y + b * time * channels;                                       \
            for (int64_t m = 0; m < pooled; m++) {                                       \
                const T *x = xb + m * channels;                                          \
                const int8_t *k = code + (b * pooled + m) * channels;                    \
                T *d = dx + m * channels;                                                \
                _Pragma("omp simd")                                                      \
                for (int64_t c = 0; c < channels; c++) {                                 \
                    d[c] = r[c] * (d[c] - m1[c] - x[c] * m2[c]);                         \
                    position[c] = (T)k[c];                                               \
                }                                                                        \
                for (int64_t p = 0; p < pool; p++) {                                     \
                    T *gy = gyb + (m * pool + p) * channels;                             \
                    _Pragma("omp simd")                                                  \
                    for (int64_t c = 0; c < channels; c++)                               \
                        gy[c] = position[c] == (T)p ? d[c] : (T)0;                       \
                }                                                                        \
            }                                                                            \
            for (int64_t i = pooled * pool * channels; i < time * channels; i++)         \
                gyb[i] = 0;                                                              \
        }                                                                                \
        free(s1);                                                                        \
        free(m1);                                                                        \
        free(dx);                                                                        \
    }                                                                                    \
    return failed;                                                                       \
}

CL_KERNELS(float, f32)
CL_KERNELS(double, f64)
