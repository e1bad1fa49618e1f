/*
 * Fused CPU kernels for the native Runge-Kutta loops (private; see _kernels.py).
 *
 * A Runge-Kutta step spends most of its time outside the dynamics in weighted sums of stage
 * derivatives, y + dt * sum_j a_ij k_j. Done with one tensor operation per term, each term is a
 * separate pass over memory (about 2.5 us for a 128 x 64 float32 state on a 2-core Xeon); these
 * kernels make one pass over all the terms at once, and compute the error ratio of a step
 * (estimate, scale, RMS) in one more pass without allocating anything.
 *
 * The functions take raw addresses (tensor.data_ptr()) and trust their caller: contiguous CPU
 * float32 or float64 tensors of at least n elements, all of the same type. _kernels.py checks
 * that before it calls them. No PyTorch headers are needed, so the module builds in a second.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_TERMS 32 /* DOP853's dense output has the most terms, 16 */
#define CHUNK 8      /* terms fused into one pass; more terms take further passes */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* one AVX2 build beside the baseline one, chosen when the module loads */
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#if defined(_MSC_VER)
#define UNROLL
#define SIMD_SUM_TOTAL
#else
#define UNROLL _Pragma("GCC unroll 8")
/* lets the compiler vectorize the sum `total` (in any order) where -fopenmp-simd is given */
#define SIMD_SUM_TOTAL _Pragma("omp simd reduction(+ : total)")
#endif

/* out[i] = base[i] + sum_{j < M} c[j] * k[j][i]   (base == NULL: no base term; out may be
 * base, for an update in place, but no k[j]) */
#define DEF_PASS(T, M)                                                                        \
    CLONES static void pass_##T##_##M(Py_ssize_t n, T *out, const T *base,                    \
                                       const T *const *k, const double *c) {                  \
        const T *kk[M];                                                                        \
        T cc[M];                                                                               \
        for (int j = 0; j < M; j++) {                                                          \
            kk[j] = k[j];                                                                      \
            cc[j] = (T)c[j];                                                                   \
        }                                                                                      \
        for (Py_ssize_t i = 0; i < n; i++) {                                                   \
            T acc = base ? base[i] : (T)0;                                                     \
            UNROLL for (int j = 0; j < M; j++) acc += cc[j] * kk[j][i];                        \
            out[i] = acc;                                                                      \
        }                                                                                      \
    }

#define DEF_LINCOMB(T)                                                                        \
    DEF_PASS(T, 1) DEF_PASS(T, 2) DEF_PASS(T, 3) DEF_PASS(T, 4)                                \
    DEF_PASS(T, 5) DEF_PASS(T, 6) DEF_PASS(T, 7) DEF_PASS(T, 8)                                \
    static void lincomb_##T(Py_ssize_t n, T *out, const T *base, int m, const T *const *k,    \
                            const double *c) {                                                 \
        if (m == 0) {                                                                          \
            if (base)                                                                          \
                memcpy(out, base, (size_t)n * sizeof(T));                                      \
            else                                                                               \
                memset(out, 0, (size_t)n * sizeof(T));                                         \
            return;                                                                            \
        }                                                                                      \
        while (m > 0) {                                                                        \
            int p = m < CHUNK ? m : CHUNK;                                                     \
            switch (p) {                                                                       \
            case 1: pass_##T##_1(n, out, base, k, c); break;                                   \
            case 2: pass_##T##_2(n, out, base, k, c); break;                                   \
            case 3: pass_##T##_3(n, out, base, k, c); break;                                   \
            case 4: pass_##T##_4(n, out, base, k, c); break;                                   \
            case 5: pass_##T##_5(n, out, base, k, c); break;                                   \
            case 6: pass_##T##_6(n, out, base, k, c); break;                                   \
            case 7: pass_##T##_7(n, out, base, k, c); break;                                   \
            default: pass_##T##_8(n, out, base, k, c); break;                                  \
            }                                                                                  \
            base = out;                                                                        \
            k += p;                                                                            \
            c += p;                                                                            \
            m -= p;                                                                            \
        }                                                                                      \
    }

/*
 * The error ratio of a step: the largest over consecutive segments of length seg of
 * RMS(err / (atol + rtol * max(|y0|, |y1|))) with err = sum_{j < M} c[j] * k[j], in one pass
 * (NaN when y1 or err is not finite).
 * M = 0 reads err from k[0] instead (more terms than one pass takes: formed by lincomb first).
 */
#define DEF_RATIO(T, M)                                                                       \
    CLONES static double ratio_##T##_##M(Py_ssize_t n, Py_ssize_t seg, const T *y0,           \
                                         const T *y1, const T *const *k, const double *c,      \
                                         double rtol, double atol) {                           \
        const T r_ = (T)rtol, a_ = (T)atol;                                                    \
        const T *kk[M > 0 ? M : 1];                                                            \
        T cc[M > 0 ? M : 1];                                                                   \
        for (int j = 0; j < (M > 0 ? M : 1); j++) {                                            \
            kk[j] = k[j];                                                                      \
            cc[j] = M > 0 ? (T)c[j] : (T)1;                                                    \
        }                                                                                      \
        double worst = 0.0;                                                                    \
        for (Py_ssize_t s = 0; s < n; s += seg) {                                              \
            Py_ssize_t e = n - s < seg ? n - s : seg;                                          \
            double total = 0.0;                                                                \
            SIMD_SUM_TOTAL for (Py_ssize_t i = s; i < s + e; i++) {                            \
                T err = 0;                                                                     \
                UNROLL for (int j = 0; j < (M > 0 ? M : 1); j++) err += cc[j] * kk[j][i];      \
                T a = y0[i] < 0 ? -y0[i] : y0[i], b = y1[i] < 0 ? -y1[i] : y1[i];              \
                /* y1 - y1: NaN where y1 is not finite, so that such a step is caught */       \
                T r = (err + (y1[i] - y1[i])) / (a_ + r_ * (a > b ? a : b));                   \
                total += (double)(r * r);                                                      \
            }                                                                                  \
            double rms = sqrt(total / (double)e);                                              \
            if (isnan(rms))                                                                    \
                return rms;                                                                    \
            if (rms > worst)                                                                   \
                worst = rms;                                                                   \
        }                                                                                      \
        return worst;                                                                          \
    }

#define DEF_ERROR_RATIO(T)                                                                    \
    DEF_RATIO(T, 0) DEF_RATIO(T, 1) DEF_RATIO(T, 2) DEF_RATIO(T, 3) DEF_RATIO(T, 4)            \
    DEF_RATIO(T, 5) DEF_RATIO(T, 6) DEF_RATIO(T, 7) DEF_RATIO(T, 8)                            \
    static double error_ratio_##T(Py_ssize_t n, Py_ssize_t seg, const T *y0, const T *y1,      \
                                  int m, const T *const *k, const double *c, double rtol,      \
                                  double atol, T *scratch) {                                   \
        switch (m) {                                                                           \
        case 1: return ratio_##T##_1(n, seg, y0, y1, k, c, rtol, atol);                        \
        case 2: return ratio_##T##_2(n, seg, y0, y1, k, c, rtol, atol);                        \
        case 3: return ratio_##T##_3(n, seg, y0, y1, k, c, rtol, atol);                        \
        case 4: return ratio_##T##_4(n, seg, y0, y1, k, c, rtol, atol);                        \
        case 5: return ratio_##T##_5(n, seg, y0, y1, k, c, rtol, atol);                        \
        case 6: return ratio_##T##_6(n, seg, y0, y1, k, c, rtol, atol);                        \
        case 7: return ratio_##T##_7(n, seg, y0, y1, k, c, rtol, atol);                        \
        case 8: return ratio_##T##_8(n, seg, y0, y1, k, c, rtol, atol);                        \
        default: {                                                                             \
            const T *err = scratch;                                                            \
            lincomb_##T(n, scratch, NULL, m, k, c);                                            \
            return ratio_##T##_0(n, seg, y0, y1, &err, c, rtol, atol);                         \
        }                                                                                      \
        }                                                                                      \
    }

/* whether all n values are finite: x - x is 0 for those, NaN for NaN and infinities */
#define DEF_ALL_FINITE(T)                                                                     \
    CLONES static int all_finite_##T(Py_ssize_t n, const T *x) {                               \
        T total = 0;                                                                           \
        SIMD_SUM_TOTAL for (Py_ssize_t i = 0; i < n; i++) total += x[i] - x[i];                \
        return total == 0;                                                                     \
    }

/* One Newton update of an implicit stage with the inverse of its iteration matrix (n <= 16):
 * r = z - rhs - g fz, delta = inv r, out = z - delta; returns RMS(delta / w) (NaN where delta
 * is not finite). The tensor form is sub, sub_, mv, sub, div_ and a norm: six passes and three
 * allocations where this is one call. */
#define NEWTON_MAX 16
#define DEF_NEWTON(T)                                                                         \
    static double newton_##T(Py_ssize_t n, T *out, const T *z, const T *rhs, const T *fz,     \
                             double g, const T *inv, const T *w) {                            \
        T r[NEWTON_MAX];                                                                       \
        for (Py_ssize_t i = 0; i < n; i++)                                                     \
            r[i] = (z[i] - rhs[i]) - (T)g * fz[i];                                             \
        double total = 0;                                                                      \
        for (Py_ssize_t i = 0; i < n; i++) {                                                   \
            T d = 0;                                                                           \
            for (Py_ssize_t j = 0; j < n; j++)                                                 \
                d += inv[i * n + j] * r[j];                                                    \
            out[i] = z[i] - d;                                                                 \
            double s = (double)(d / w[i]);                                                     \
            total += s * s;                                                                    \
        }                                                                                      \
        return sqrt(total / (double)n);                                                        \
    }

/* One Newton iteration of every sample on the per-sample lane (n <= 16 elements a sample, the
 * inverse of each sample's I - g_b J_b at hand), with the stopping rule of the tensor form in
 * _implicit_per_sample.py, sample by sample (about 45 tensor operations of a few microseconds
 * each there, one pass here). For a running sample b: the update and its size by newton()
 * above (the joint lane's update: a sample takes the same update as alone), then the rule; a
 * sample not running keeps its iterate and its bookkeeping. Returns bit 0: a size was not
 * finite, bit 1: a sample gave up, bit 2: one that gave up had a Jacobian not formed in this
 * step, bit 3: a sample runs on. */
#define DEF_NEWTON_BATCH(T)                                                                   \
    static int newton_batch_##T(Py_ssize_t B, Py_ssize_t n, T *out, const T *z, const T *rhs,  \
                                const T *fz, const T *g, const T *inv, const T *w,             \
                                unsigned char *running, double *prev, double *eta,             \
                                double *eta_done, int64_t *it, double *slowest,                \
                                unsigned char *converged, const unsigned char *fresh,          \
                                unsigned char *nonfinite, unsigned char *give_up, double kappa, \
                                int64_t max_it) {                                              \
        int flags = 0;                                                                         \
        for (Py_ssize_t b = 0; b < B; b++) {                                                   \
            const Py_ssize_t o = b * n;                                                        \
            nonfinite[b] = 0;                                                                  \
            give_up[b] = 0;                                                                    \
            if (!running[b]) {                                                                 \
                memcpy(out + o, z + o, (size_t)n * sizeof(T));                                 \
                continue;                                                                      \
            }                                                                                  \
            double size = newton_##T(n, out + o, z + o, rhs + o, fz + o, (double)g[b],         \
                                     inv + o * n, w + o);                                      \
            int bad = !isfinite(size);                                                         \
            double rate = size / prev[b];                                                      \
            int later = it[b] > 0;                                                             \
            if (bad || (later && rate >= 0.9)) {                                               \
                nonfinite[b] = (unsigned char)bad;                                             \
                give_up[b] = 1;                                                                \
                running[b] = 0;                                                                \
                flags |= (bad ? 1 : 0) | 2 | (fresh[b] ? 0 : 4);                               \
                continue;                                                                      \
            }                                                                                  \
            if (later) {                                                                       \
                slowest[b] = rate > slowest[b] ? rate : slowest[b];                            \
                eta[b] = rate / (1.0 - rate);                                                  \
            }                                                                                  \
            int done = eta[b] * size <= kappa || size <= 1e-10;                                \
            prev[b] = size;                                                                    \
            it[b] += 1;                                                                        \
            if (done) {                                                                        \
                eta_done[b] = eta[b];                                                          \
                converged[b] = 1;                                                              \
                running[b] = 0;                                                                \
            } else if (it[b] >= max_it) {                                                      \
                give_up[b] = 1;                                                                \
                running[b] = 0;                                                                \
                flags |= 2 | (fresh[b] ? 0 : 4);                                               \
            } else {                                                                           \
                flags |= 8;                                                                    \
            }                                                                                  \
        }                                                                                      \
        return flags;                                                                          \
    }

DEF_LINCOMB(float)
DEF_LINCOMB(double)
DEF_NEWTON(float)
DEF_NEWTON(double)
DEF_NEWTON_BATCH(float)
DEF_NEWTON_BATCH(double)
DEF_ERROR_RATIO(float)
DEF_ERROR_RATIO(double)
DEF_ALL_FINITE(float)
DEF_ALL_FINITE(double)

/*
 * The terms of a sum: `addresses` is a list (or tuple) of data addresses, `terms` a flat tuple
 * (j0, c0, j1, c1, ...) of indices into it and coefficients, and every coefficient is multiplied
 * by `scale` (the step size): the term j, c stands for c * scale * addresses[j].
 */
typedef struct {
    void *k[MAX_TERMS]; /* the addresses of the terms' tensors */
    double c[MAX_TERMS]; /* their coefficients, times the scale */
    int m;               /* how many terms */
} Sum;

static int parse_terms(PyObject *addresses, PyObject *terms, double scale, Sum *sum) {
    void **k = sum->k;
    double *c = sum->c;
    int *m = &sum->m;
    if (!(PyList_Check(addresses) || PyTuple_Check(addresses)) || !PyTuple_Check(terms)) {
        PyErr_SetString(PyExc_TypeError, "addresses must be a list or tuple, terms a tuple");
        return -1;
    }
    Py_ssize_t size = PySequence_Fast_GET_SIZE(addresses);
    PyObject **items = PySequence_Fast_ITEMS(addresses);
    Py_ssize_t nt = PyTuple_GET_SIZE(terms);
    if (nt % 2 != 0 || nt / 2 > MAX_TERMS) {
        PyErr_Format(PyExc_ValueError,
                     "terms must hold up to %d (index, coefficient) pairs, flattened", MAX_TERMS);
        return -1;
    }
    *m = (int)(nt / 2);
    for (int i = 0; i < *m; i++) {
        Py_ssize_t j = PyLong_AsSsize_t(PyTuple_GET_ITEM(terms, 2 * i));
        if (j == -1 && PyErr_Occurred())
            return -1;
        if (j < 0 || j >= size) {
            PyErr_Format(PyExc_IndexError, "term index %zd out of range for %zd addresses", j,
                         size);
            return -1;
        }
        k[i] = PyLong_AsVoidPtr(items[j]);
        c[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(terms, 2 * i + 1)) * scale;
        if (PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* A TypeError naming the call's form unless it got `want` arguments. */
static int check_args(Py_ssize_t nargs, Py_ssize_t want, const char *usage) {
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(lincomb_doc,
             "lincomb(is_double, n, out, base, addresses, terms, scale)\n\n"
             "out = base + sum(c * scale * addresses[j] for j, c in pairs(terms)) over n "
             "elements (base None: no base term).");

static PyObject *py_lincomb(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Sum sum;
    if (check_args(nargs, 7, "lincomb(is_double, n, out, base, addresses, terms, scale)") < 0)
        return NULL;
    int dbl = PyObject_IsTrue(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    void *out = PyLong_AsVoidPtr(args[2]);
    void *base = args[3] == Py_None ? NULL : PyLong_AsVoidPtr(args[3]);
    double scale = PyFloat_AsDouble(args[6]);
    if (dbl < 0 || PyErr_Occurred())
        return NULL;
    if (parse_terms(args[4], args[5], scale, &sum) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    if (dbl)
        lincomb_double(n, out, base, sum.m, (const double *const *)sum.k, sum.c);
    else
        lincomb_float(n, out, base, sum.m, (const float *const *)sum.k, sum.c);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(error_ratio_doc,
             "error_ratio(is_double, n, seg, y0, y1, rtol, atol, scratch, addresses, terms, "
             "scale)\n\n"
             "err = the sum of the terms, as in lincomb; returns the max over segments of length "
             "seg of RMS(err / (atol + rtol * max(|y0|, |y1|))), NaN where y1 or err is not "
             "finite. scratch (n elements) is used when there are more than 8 terms (else it "
             "may be 0).");

static PyObject *py_error_ratio(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Sum sum;
    if (check_args(nargs, 11,
                   "error_ratio(is_double, n, seg, y0, y1, rtol, atol, scratch, addresses, "
                   "terms, scale)") < 0)
        return NULL;
    int dbl = PyObject_IsTrue(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    Py_ssize_t seg = PyLong_AsSsize_t(args[2]);
    void *y0 = PyLong_AsVoidPtr(args[3]);
    void *y1 = PyLong_AsVoidPtr(args[4]);
    double rtol = PyFloat_AsDouble(args[5]);
    double atol = PyFloat_AsDouble(args[6]);
    void *scratch = PyLong_AsVoidPtr(args[7]);
    double scale = PyFloat_AsDouble(args[10]);
    if (dbl < 0 || PyErr_Occurred())
        return NULL;
    if (seg <= 0) {
        PyErr_SetString(PyExc_ValueError, "seg must be positive");
        return NULL;
    }
    if (parse_terms(args[8], args[9], scale, &sum) < 0)
        return NULL;
    if (sum.m > CHUNK && scratch == NULL) {
        PyErr_SetString(PyExc_ValueError, "a sum of more than 8 terms needs a scratch buffer");
        return NULL;
    }
    double ratio;
    Py_BEGIN_ALLOW_THREADS;
    if (dbl)
        ratio = error_ratio_double(n, seg, y0, y1, sum.m, (const double *const *)sum.k, sum.c,
                                   rtol, atol, scratch);
    else
        ratio = error_ratio_float(n, seg, y0, y1, sum.m, (const float *const *)sum.k, sum.c,
                                  rtol, atol, scratch);
    Py_END_ALLOW_THREADS;
    return PyFloat_FromDouble(ratio);
}

PyDoc_STRVAR(all_finite_doc, "all_finite(is_double, n, address)\n\n"
                             "Whether all n values at address are finite.");

static PyObject *py_all_finite(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 3, "all_finite(is_double, n, address)") < 0)
        return NULL;
    int dbl = PyObject_IsTrue(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    void *x = PyLong_AsVoidPtr(args[2]);
    if (dbl < 0 || PyErr_Occurred())
        return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS;
    ok = dbl ? all_finite_double(n, x) : all_finite_float(n, x);
    Py_END_ALLOW_THREADS;
    return PyBool_FromLong(ok);
}

PyDoc_STRVAR(newton_doc, "newton(is_double, n, out, z, rhs, fz, g, inverse, w)\n\n"
                         "One Newton update of an implicit stage (n <= 16): out = z - inverse @ "
                         "(z - rhs - g * fz); returns RMS((z - out) / w).");

static PyObject *py_newton(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 9, "newton(is_double, n, out, z, rhs, fz, g, inverse, w)") < 0)
        return NULL;
    int dbl = PyObject_IsTrue(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    void *out = PyLong_AsVoidPtr(args[2]);
    void *z = PyLong_AsVoidPtr(args[3]);
    void *rhs = PyLong_AsVoidPtr(args[4]);
    void *fz = PyLong_AsVoidPtr(args[5]);
    double g = PyFloat_AsDouble(args[6]);
    void *inv = PyLong_AsVoidPtr(args[7]);
    void *w = PyLong_AsVoidPtr(args[8]);
    if (dbl < 0 || PyErr_Occurred())
        return NULL;
    if (n <= 0 || n > NEWTON_MAX) {
        PyErr_Format(PyExc_ValueError, "newton takes 1 to %d elements, got %zd", NEWTON_MAX, n);
        return NULL;
    }
    double size = dbl ? newton_double(n, out, z, rhs, fz, g, inv, w)
                      : newton_float(n, out, z, rhs, fz, g, inv, w);
    return PyFloat_FromDouble(size);
}

PyDoc_STRVAR(newton_batch_doc,
             "newton_batch(is_double, B, n, out, z, rhs, fz, g, inverse, w, running, prev, eta, "
             "eta_done, it, slowest, converged, fresh, nonfinite, give_up, kappa, max_it)\n\n"
             "One Newton iteration of B independent samples of n <= 16 elements with the "
             "per-sample lane's stopping rule; returns the flags: 1 a size not finite, 2 a "
             "sample gave up, 4 one that gave up had an old Jacobian, 8 a sample runs on.");

static PyObject *py_newton_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_args(nargs, 22,
                   "newton_batch(is_double, B, n, out, z, rhs, fz, g, inverse, w, running, "
                   "prev, eta, eta_done, it, slowest, converged, fresh, nonfinite, give_up, "
                   "kappa, max_it)") < 0)
        return NULL;
    int dbl = PyObject_IsTrue(args[0]);
    Py_ssize_t B = PyLong_AsSsize_t(args[1]);
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    void *p[17];
    for (int i = 0; i < 17; i++)
        p[i] = PyLong_AsVoidPtr(args[3 + i]);
    double kappa = PyFloat_AsDouble(args[20]);
    long long max_it = PyLong_AsLongLong(args[21]);
    if (dbl < 0 || PyErr_Occurred())
        return NULL;
    if (n <= 0 || n > NEWTON_MAX || B < 0) {
        PyErr_Format(PyExc_ValueError, "newton_batch takes 1 to %d elements a sample, got %zd",
                     NEWTON_MAX, n);
        return NULL;
    }
    int flags;
    Py_BEGIN_ALLOW_THREADS;
#define NEWTON_BATCH_ARGS                                                                     \
    B, n, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12],    \
        p[13], p[14], p[15], p[16], kappa, (int64_t)max_it
    flags = dbl ? newton_batch_double(NEWTON_BATCH_ARGS)
                : newton_batch_float(NEWTON_BATCH_ARGS);
    Py_END_ALLOW_THREADS;
    return PyLong_FromLong(flags);
}

static PyMethodDef methods[] = {
    {"newton", (PyCFunction)(void (*)(void))py_newton, METH_FASTCALL, newton_doc},
    {"newton_batch", (PyCFunction)(void (*)(void))py_newton_batch, METH_FASTCALL,
     newton_batch_doc},
    {"lincomb", (PyCFunction)(void (*)(void))py_lincomb, METH_FASTCALL, lincomb_doc},
    {"error_ratio", (PyCFunction)(void (*)(void))py_error_ratio, METH_FASTCALL,
     error_ratio_doc},
    {"all_finite", (PyCFunction)(void (*)(void))py_all_finite, METH_FASTCALL, all_finite_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused", "Fused CPU kernels of the native Runge-Kutta loops.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
