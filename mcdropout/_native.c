/* The engine's compiled kernels (optional: mcdropout.native says whether they were built).
 *
 * At batch 1 a prediction is a few small matrix products and many small steps
 * around them, and with cold caches each torch or numpy call among those steps
 * costs 10-40 us, mostly in fetching its own code. These kernels do such steps
 * in one small call each.
 *
 * apply: dropout masks drawn and applied in one pass. The masks are the ones
 * mcdropout.masks draws with numpy's Philox4x64-10, bit for bit: the key is
 * (layer, seed), sample t's mask takes the `stride` counter blocks from
 * (first_sample + t) * stride on (numpy advances the counter before each
 * block), and a block's 32 bytes, in memory order as numpy's view of them,
 * give 256 / bits draws. An element is kept, scaled, where its draw is >= level.
 *
 * moments: per-column mean and population variance over the rows of a
 * float32 or float64 matrix, in float64.
 *
 * all_finite, any_nonzero: whether an input holds no NaN or inf; whether the
 * samples' variances show any spread at all.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void philox4x64_10(const uint64_t counter[4], uint64_t k0, uint64_t k1, uint64_t out[4]) {
    uint64_t x0 = counter[0], x1 = counter[1], x2 = counter[2], x3 = counter[3];
    for (int round = 0; round < 10; round++) {
        __uint128_t p0 = (__uint128_t)0xD2E7470EE14C6C93ULL * x0;
        __uint128_t p1 = (__uint128_t)0xCA5A826395121157ULL * x2;
        uint64_t hi0 = (uint64_t)(p0 >> 64), lo0 = (uint64_t)p0;
        uint64_t hi1 = (uint64_t)(p1 >> 64), lo1 = (uint64_t)p1;
        x0 = hi1 ^ x1 ^ k0;
        x1 = lo1;
        x2 = hi0 ^ x3 ^ k1;
        x3 = lo0;
        k0 += 0x9E3779B97F4A7C15ULL;
        k1 += 0xBB67AE8584CAA73BULL;
    }
    out[0] = x0;
    out[1] = x1;
    out[2] = x2;
    out[3] = x3;
}

/* Sample t's mask values: scale where kept, 0 where dropped. No branch on a draw (they are random:
 * half the branches would be mispredicted); one bit per element reads eight values per byte from
 * `octets`, the values of every byte. */
static void draw(float *mask, Py_ssize_t units, uint64_t k0, uint64_t k1, uint64_t first_block, uint64_t stream,
                 int bits, unsigned level, float scale, const float (*octets)[8]) {
    const Py_ssize_t per_block = 256 / bits;
    for (Py_ssize_t start = 0, block = 0; start < units; start += per_block, block++) {
        uint64_t counter[4] = {first_block + (uint64_t)block + 1, 0, 0, stream}, words[4];
        unsigned char bytes[32];
        uint16_t halves[16];
        philox4x64_10(counter, k0, k1, words);
        memcpy(bytes, words, sizeof bytes);
        memcpy(halves, words, sizeof halves);
        const Py_ssize_t count = units - start < per_block ? units - start : per_block;
        float *out = mask + start;
        if (bits == 1) {
            Py_ssize_t q = 0;
            for (; q + 8 <= count; q += 8) {
                memcpy(out + q, octets[bytes[q >> 3]], 8 * sizeof(float));
            }
            for (; q < count; q++) {
                out[q] = octets[bytes[q >> 3]][q & 7];
            }
        } else if (bits == 8) {
            for (Py_ssize_t q = 0; q < count; q++) {
                out[q] = scale * (float)(bytes[q] >= level);
            }
        } else {
            for (Py_ssize_t q = 0; q < count; q++) {
                out[q] = scale * (float)(halves[q] >= level);
            }
        }
    }
}

/* apply(source, source_sample_stride, target, samples, rows, units, inner, key0, key1, first_sample, stream,
 *       bits, level, scale)
 *
 * source and target are addresses of contiguous float32 data. For sample t, row r and feature i < units * inner:
 *   target[(t * rows + r) * F + i] = source[t * source_sample_stride + r * F + i] * mask_t[i / inner],
 * F = units * inner. A source_sample_stride of 0 reads every sample's replicas from one copy of the rows;
 * source == target masks in place.
 */
static PyObject *apply(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 14) {
        PyErr_Format(PyExc_TypeError, "apply takes 14 arguments, got %zd", nargs);
        return NULL;
    }
    const float *source = PyLong_AsVoidPtr(args[0]);
    const Py_ssize_t source_stride = PyLong_AsSsize_t(args[1]);
    float *target = PyLong_AsVoidPtr(args[2]);
    const Py_ssize_t samples = PyLong_AsSsize_t(args[3]), rows = PyLong_AsSsize_t(args[4]);
    const Py_ssize_t units = PyLong_AsSsize_t(args[5]), inner = PyLong_AsSsize_t(args[6]);
    const uint64_t key0 = PyLong_AsUnsignedLongLong(args[7]), key1 = PyLong_AsUnsignedLongLong(args[8]);
    const uint64_t first_sample = PyLong_AsUnsignedLongLong(args[9]), stream = PyLong_AsUnsignedLongLong(args[10]);
    const long bits = PyLong_AsLong(args[11]), level = PyLong_AsLong(args[12]);
    const double scale = PyFloat_AsDouble(args[13]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!(bits == 1 || bits == 8 || bits == 16) || level < 0 || level >= (1L << bits) || units < 1 || inner < 1) {
        PyErr_SetString(PyExc_ValueError, "apply: bits must be 1, 8 or 16, level in [0, 2**bits), units and inner >= 1");
        return NULL;
    }
    float *mask = malloc(sizeof(float) * (size_t)units);
    if (mask == NULL) {
        return PyErr_NoMemory();
    }
    const Py_ssize_t features = units * inner, stride = (units + 256 / bits - 1) / (256 / bits);
    Py_BEGIN_ALLOW_THREADS
    float octets[256][8];  /* one bit per element (then level is 1): the mask values of each byte */
    for (int byte = 0; bits == 1 && byte < 256; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            octets[byte][bit] = (float)scale * (float)(((unsigned)byte >> bit) & 1u);
        }
    }
    for (Py_ssize_t t = 0; t < samples; t++) {
        draw(mask, units, key0, key1, (first_sample + (uint64_t)t) * (uint64_t)stride, stream, (int)bits,
             (unsigned)level, (float)scale, (const float (*)[8])octets);
        for (Py_ssize_t r = 0; r < rows; r++) {
            const float *in = source + t * source_stride + r * features;
            float *out = target + (t * rows + r) * features;
            if (inner == 1 && in == out) {  /* its own loop: no aliasing to keep it from vectorising */
                for (Py_ssize_t i = 0; i < features; i++) {
                    out[i] *= mask[i];
                }
            } else if (inner == 1) {
                for (Py_ssize_t i = 0; i < features; i++) {
                    out[i] = in[i] * mask[i];
                }
            } else {
                for (Py_ssize_t i = 0; i < features; i++) {
                    out[i] = in[i] * mask[i / inner];
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(mask);
    Py_RETURN_NONE;
}

/* moments(source, is_double, samples, columns, mean, variance) -> bool
 *
 * source: the address of a contiguous (samples, columns) float32 (is_double false) or float64 matrix; mean and
 * variance: addresses of `columns` float64 each, written with each column's mean and population variance (two
 * passes: the mean, then the mean squared deviation). Returns whether any variance is above zero.
 */
static PyObject *moments(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "moments takes 6 arguments, got %zd", nargs);
        return NULL;
    }
    const void *source = PyLong_AsVoidPtr(args[0]);
    const int is_double = PyObject_IsTrue(args[1]);
    const Py_ssize_t samples = PyLong_AsSsize_t(args[2]), columns = PyLong_AsSsize_t(args[3]);
    double *mean = PyLong_AsVoidPtr(args[4]), *variance = PyLong_AsVoidPtr(args[5]);
    if (PyErr_Occurred() || is_double < 0) {
        return NULL;
    }
    if (samples < 1 || columns < 0) {
        PyErr_SetString(PyExc_ValueError, "moments: samples must be >= 1 and columns >= 0");
        return NULL;
    }
    int positive = 0;
    Py_BEGIN_ALLOW_THREADS
    const float *single = source;
    const double *twice = source;
    for (Py_ssize_t j = 0; j < columns; j++) {
        mean[j] = 0.0;
        variance[j] = 0.0;
    }
    for (Py_ssize_t s = 0; s < samples; s++) {
        for (Py_ssize_t j = 0; j < columns; j++) {
            mean[j] += is_double ? twice[s * columns + j] : (double)single[s * columns + j];
        }
    }
    for (Py_ssize_t j = 0; j < columns; j++) {
        mean[j] /= (double)samples;
    }
    for (Py_ssize_t s = 0; s < samples; s++) {
        for (Py_ssize_t j = 0; j < columns; j++) {
            const double deviation = (is_double ? twice[s * columns + j] : (double)single[s * columns + j]) - mean[j];
            variance[j] += deviation * deviation;
        }
    }
    for (Py_ssize_t j = 0; j < columns; j++) {
        variance[j] /= (double)samples;
        positive |= variance[j] > 0.0;
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(positive);
}

/* The arguments of the scans below, (source, is_double, count): the address of `count` contiguous float32
 * values (float64 where is_double). 0 when they were read, -1 with an exception set when not. */
static int scan_arguments(const char *name, PyObject *const *args, Py_ssize_t nargs, const void **source,
                          int *is_double, Py_ssize_t *count) {
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s takes 3 arguments, got %zd", name, nargs);
        return -1;
    }
    *source = PyLong_AsVoidPtr(args[0]);
    *is_double = PyObject_IsTrue(args[1]);
    *count = PyLong_AsSsize_t(args[2]);
    return PyErr_Occurred() || *is_double < 0 ? -1 : 0;
}

/* all_finite(source, is_double, count) -> bool: whether the values are all finite. x * 0 is 0 for a finite x
 * and NaN for inf or NaN, so one sum tells, with no branch per value. */
static PyObject *all_finite(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    const void *source;
    int is_double;
    Py_ssize_t count;
    if (scan_arguments("all_finite", args, nargs, &source, &is_double, &count) < 0) {
        return NULL;
    }
    double total = 0.0;
    Py_BEGIN_ALLOW_THREADS
    if (is_double) {
        const double *values = source;
        for (Py_ssize_t i = 0; i < count; i++) {
            total += values[i] * 0.0;
        }
    } else {
        const float *values = source;
        float part = 0.0f;
        for (Py_ssize_t i = 0; i < count; i++) {
            part += values[i] * 0.0f;
        }
        total = part;
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(total == 0.0);
}

/* any_nonzero(source, is_double, count) -> bool: whether any value is not zero (NaN counts, as in torch's any). */
static PyObject *any_nonzero(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    const void *source;
    int is_double;
    Py_ssize_t count;
    if (scan_arguments("any_nonzero", args, nargs, &source, &is_double, &count) < 0) {
        return NULL;
    }
    int found = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count && !found; i++) {
        found = is_double ? ((const double *)source)[i] != 0.0 : ((const float *)source)[i] != 0.0f;
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(found);
}

static PyMethodDef methods[] = {
    {"apply", (PyCFunction)(void (*)(void))apply, METH_FASTCALL, "Draw dropout masks and apply them in one pass."},
    {"moments", (PyCFunction)(void (*)(void))moments, METH_FASTCALL,
     "Per-column mean and population variance over the rows, in float64."},
    {"all_finite", (PyCFunction)(void (*)(void))all_finite, METH_FASTCALL, "Whether contiguous floats are all finite."},
    {"any_nonzero", (PyCFunction)(void (*)(void))any_nonzero, METH_FASTCALL, "Whether any contiguous float is not 0."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    return PyModule_Create(&definition);
}
