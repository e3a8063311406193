/* Images: PNG encoding with text chunks. */
#include "binding.h"

#include <stdlib.h>

#include "io/png.h"

#define MAX_TEXTS 16

/* encode_png(image uint8 (H, W, 3), text: dict[str, str] | None) -> bytes */
static PyObject *py_encode_png(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"image", "text", NULL};
    PyObject *obj, *text = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:encode_png", kwlist, &obj, &text))
        return NULL;
    if (!PyArray_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "encode_png: argument 'image' must be a NumPy array");
        return NULL;
    }
    PyArrayObject *img = (PyArrayObject *)obj;
    if (PyArray_TYPE(img) != NPY_UINT8 || PyArray_NDIM(img) != 3 || PyArray_DIM(img, 2) != 3) {
        PyErr_SetString(PyExc_ValueError,
                        "encode_png: argument 'image' must be uint8 of shape (H, W, 3)");
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(img)) {
        PyErr_SetString(PyExc_ValueError, "encode_png: argument 'image' must be C-contiguous");
        return NULL;
    }
    if (text != Py_None && !PyDict_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "encode_png: argument 'text' must be a dict or None");
        return NULL;
    }
    sd_png_text texts[MAX_TEXTS];
    int n = 0;
    if (text != Py_None) {
        if (PyDict_Size(text) > MAX_TEXTS) {
            PyErr_Format(PyExc_ValueError, "encode_png: at most %d text entries", MAX_TEXTS);
            return NULL;
        }
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(text, &pos, &key, &value)) {
            if (!PyUnicode_Check(key) || !PyUnicode_Check(value)) {
                PyErr_SetString(PyExc_TypeError, "encode_png: text keys and values must be str");
                return NULL;
            }
            /* borrowed UTF-8 buffers live as long as the dict's strings */
            texts[n].key = PyUnicode_AsUTF8(key);
            texts[n].value = PyUnicode_AsUTF8(value);
            if (!texts[n].key || !texts[n].value)
                return NULL;
            n++;
        }
    }
    uint8_t *png = NULL;
    size_t len = 0;
    sd_status s;
    const uint8_t *rgb = PyArray_DATA(img);
    int h = (int)PyArray_DIM(img, 0), w = (int)PyArray_DIM(img, 1);
    Py_BEGIN_ALLOW_THREADS;
    s = sd_png_encode(rgb, w, h, texts, n, &png, &len);
    Py_END_ALLOW_THREADS;
    if (s != SD_OK)
        return sd_raise(s);
    PyObject *out = PyBytes_FromStringAndSize((const char *)png, (Py_ssize_t)len);
    free(png);
    return out;
}

#define KW (PyCFunction)(void (*)(void))
PyMethodDef sd_image_methods[] = {
    {"encode_png", KW py_encode_png, METH_VARARGS | METH_KEYWORDS,
     "encode_png(image uint8 (H, W, 3), text=None) -> PNG bytes with the text chunks"},
    {NULL, NULL, 0, NULL},
};
