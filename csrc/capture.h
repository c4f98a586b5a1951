// What capture.cpp (accdump._C.StepCapture) offers the rest of the extension.
#pragma once

#include <Python.h>

#include <cstdint>

// Whether `obj` is an accdump._C.StepCapture.
bool accdump_is_step_capture(PyObject* obj);

// StepCapture.capture(value, name, call, role, kind) without the Python call: the records made,
// -1 when the value is left to Python (nothing recorded), or -2 with a Python error set.
int64_t accdump_step_capture(PyObject* step_capture, PyObject* value, PyObject* name, int64_t call, int64_t role,
                             PyObject* kind);

// Readies `type` and adds it to the extension module as `name`; -1 with a Python error on failure
// (module_calls.cpp).
int accdump_add_type(PyObject* module, PyTypeObject* type, const char* name);

// Adds StepCapture to the extension module; -1 with a Python error on failure.
int accdump_add_capture_type(PyObject* module);

// Adds CallFrame and CallSite (module_calls.cpp) to the extension module; -1 with a Python
// error on failure.
int accdump_add_call_types(PyObject* module);
