/* masking._hmac_native: HMAC-SHA256(key, prefix + value) of every value of one Arrow string or binary array.
 *
 * The hashing is OpenSSL's own HMAC (libcrypto): one HMAC_CTX is keyed once per call, then every value costs
 * HMAC_Init_ex(ctx, NULL, 0, NULL, NULL) (documented to reuse the key), two HMAC_Update and one HMAC_Final -
 * the same calls that `openssl speed -hmac sha256` times. Nothing here implements a hash function. The
 * HMAC_CTX functions are deprecated in OpenSSL 3.0 (in favour of EVP_MAC, whose per-value re-initialisation
 * costs about twice as much in 3.0) but not removed; where they are missing the build fails and
 * masking.hashing uses its pure-Python fallback.
 *
 * The values are read straight from the array's buffers (validity bitmap, 32- or 64-bit offsets, data), the
 * truncated digests (raw, or lower-case hex) of the valid rows are written in row order into one new bytes
 * object, and the GIL is released for the loop, so threads hash slices of an array in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

/* Bumped whenever the Python-facing signature changes, so a stale build is not used by newer Python code. */
#define API_VERSION 1
#define DIGEST_BYTES 32

enum outcome { OK = 0, BAD_OFFSETS, VALID_COUNT_WRONG, OPENSSL_FAILED };

static const char HEX[] = "0123456789abcdef";

static void
release_all(Py_buffer *buffers[], int count)
{
    for (int i = 0; i < count; i++) {
        if (buffers[i]->obj != NULL) {
            PyBuffer_Release(buffers[i]);
        }
    }
}

static enum outcome
hash_rows(HMAC_CTX *ctx, const unsigned char *prefix, size_t prefix_len, const unsigned char *offsets,
          int offset_bytes, const unsigned char *data, Py_ssize_t data_len, const unsigned char *validity,
          Py_ssize_t first, Py_ssize_t count, Py_ssize_t valid_count, int width, int hexed, unsigned char *out)
{
    unsigned char digest[DIGEST_BYTES];
    unsigned int digest_len = 0;
    const size_t stride = hexed ? 2 * (size_t)width : (size_t)width;
    Py_ssize_t written = 0;
    enum outcome outcome = OK;

    for (Py_ssize_t row = first; row < first + count; row++) {
        if (validity != NULL && !((validity[row >> 3] >> (row & 7)) & 1)) {
            continue;
        }
        int64_t start, stop;
        if (offset_bytes == 4) {
            int32_t pair[2];
            memcpy(pair, offsets + (size_t)row * 4, sizeof pair);
            start = pair[0];
            stop = pair[1];
        } else {
            int64_t pair[2];
            memcpy(pair, offsets + (size_t)row * 8, sizeof pair);
            start = pair[0];
            stop = pair[1];
        }
        if (start < 0 || stop < start || stop > (int64_t)data_len) {
            outcome = BAD_OFFSETS;
            break;
        }
        if (written == valid_count) {
            outcome = VALID_COUNT_WRONG;
            break;
        }
        if (!HMAC_Init_ex(ctx, NULL, 0, NULL, NULL) || !HMAC_Update(ctx, prefix, prefix_len)
            || !HMAC_Update(ctx, data + start, (size_t)(stop - start)) || !HMAC_Final(ctx, digest, &digest_len)
            || digest_len != DIGEST_BYTES) {
            outcome = OPENSSL_FAILED;
            break;
        }
        unsigned char *target = out + (size_t)written * stride;
        if (hexed) {
            for (int i = 0; i < width; i++) {
                target[2 * i] = (unsigned char)HEX[digest[i] >> 4];
                target[2 * i + 1] = (unsigned char)HEX[digest[i] & 0x0F];
            }
        } else {
            memcpy(target, digest, (size_t)width);
        }
        written++;
    }
    OPENSSL_cleanse(digest, sizeof digest);
    if (outcome == OK && written != valid_count) {
        outcome = VALID_COUNT_WRONG;
    }
    return outcome;
}

PyDoc_STRVAR(hmac_sha256_rows_doc,
"hmac_sha256_rows(key, prefix, *, offsets, offset_bytes, data, validity, first, count, valid_count, width, hexed)\n"
"--\n\n"
"HMAC-SHA256(key, prefix + value)[:width] of rows first .. first+count-1 of an Arrow string/binary array\n"
"whose validity bit is set (every row when validity is None), concatenated in row order: raw bytes, or\n"
"lower-case hex (2*width characters each) when hexed. valid_count is the number of such rows.");

static PyObject *
hmac_sha256_rows(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"key", "prefix", "offsets", "offset_bytes", "data", "validity", "first", "count",
                               "valid_count", "width", "hexed", NULL};
    Py_buffer key = {0}, prefix = {0}, offsets = {0}, data = {0}, validity = {0};
    Py_buffer *held[] = {&key, &prefix, &offsets, &data, &validity};
    PyObject *validity_obj = Py_None;
    int offset_bytes = 0, width = 0, hexed = 0;
    Py_ssize_t first = 0, count = 0, valid_count = 0;
    (void)module;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*$y*iy*Onnnip:hmac_sha256_rows", keywords, &key, &prefix,
                                     &offsets, &offset_bytes, &data, &validity_obj, &first, &count, &valid_count,
                                     &width, &hexed)) {
        release_all(held, 5);
        return NULL;
    }
    if (validity_obj != Py_None && PyObject_GetBuffer(validity_obj, &validity, PyBUF_SIMPLE) != 0) {
        release_all(held, 5);
        return NULL;
    }

    const char *problem = NULL;
    if (offset_bytes != 4 && offset_bytes != 8) {
        problem = "offset_bytes must be 4 or 8";
    } else if (width < 1 || width > DIGEST_BYTES) {
        problem = "width must be 1 to 32 bytes";
    } else if (first < 0 || count < 0 || valid_count < 0 || valid_count > count) {
        problem = "first, count and valid_count must be non-negative, valid_count at most count";
    } else if (offsets.len / offset_bytes < first + count + 1) {
        problem = "the offsets buffer is shorter than the rows asked for";
    } else if (validity.obj != NULL && validity.len < (first + count + 7) / 8) {
        problem = "the validity bitmap is shorter than the rows asked for";
    } else if (validity.obj == NULL && valid_count != count) {
        problem = "without a validity bitmap every row is valid";
    } else if (key.len > INT_MAX) {
        problem = "the key is too long";
    }
    if (problem != NULL) {
        release_all(held, 5);
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }

    const size_t stride = hexed ? 2 * (size_t)width : (size_t)width;
    PyObject *result = PyBytes_FromStringAndSize(NULL, valid_count * (Py_ssize_t)stride);
    HMAC_CTX *ctx = HMAC_CTX_new();
    if (result == NULL || ctx == NULL) {
        Py_XDECREF(result);
        HMAC_CTX_free(ctx);
        release_all(held, 5);
        return PyErr_NoMemory();
    }
    enum outcome outcome = OPENSSL_FAILED;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    /* The result object is not shared with anyone until it is returned, so it is filled without the GIL. */
    Py_BEGIN_ALLOW_THREADS
    if (HMAC_Init_ex(ctx, key.buf, (int)key.len, EVP_sha256(), NULL)) {
        outcome = hash_rows(ctx, prefix.buf, (size_t)prefix.len, offsets.buf, offset_bytes, data.buf, data.len,
                            validity.obj != NULL ? validity.buf : NULL, first, count, valid_count, width, hexed,
                            out);
    }
    Py_END_ALLOW_THREADS
    HMAC_CTX_free(ctx);  /* cleanses the keyed state */
    release_all(held, 5);

    switch (outcome) {
    case OK:
        return result;
    case BAD_OFFSETS:
        PyErr_SetString(PyExc_ValueError, "an offset lies outside the data buffer");
        break;
    case VALID_COUNT_WRONG:
        PyErr_SetString(PyExc_ValueError, "valid_count does not match the validity bitmap");
        break;
    case OPENSSL_FAILED:
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's HMAC-SHA256 failed");
        break;
    }
    Py_DECREF(result);
    return NULL;
}

static PyMethodDef methods[] = {
    {"hmac_sha256_rows", (PyCFunction)(void (*)(void))hmac_sha256_rows, METH_VARARGS | METH_KEYWORDS,
     hmac_sha256_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "masking._hmac_native",
    "OpenSSL's HMAC-SHA256 over Arrow string/binary buffers, without the GIL (see masking.hashing).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__hmac_native(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "API_VERSION", API_VERSION) != 0
        || PyModule_AddStringConstant(module, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
