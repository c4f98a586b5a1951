// Entering and leaving a wrapped module's calls in native code: accdump._C.CallSite and the
// frames of the recorder's stack of calls in progress, accdump._C.CallFrame.
//
// accdump/capture/module_calls.py wraps every module's forward so that each call runs
// enter(module, args, kwargs) before it and leave(module, args, kwargs, output) after it. On a
// model whose host sets the pace, the Python bodies of those two (the open step, the stack,
// the call index, handing the values to StepCapture) cost the host more than the capture
// itself; a CallSite, one per module, does the same in C. It follows the closures of
// Recorder._call_functions line by line and hands every case they hand on (no open step, an
// empty stack, a stopped recorder, a frame that is not this module's) to the recorder's
// Python `_enter` / `_leave`. Python builds frames with the same type, so both paths share one
// stack.
#include <Python.h>
#include <structmember.h>

#include <cstddef>
#include <utility>

#include "capture.h"

namespace accdump {
namespace {

// Attribute names, interned once.
PyObject* s_buf = nullptr;
PyObject* s_enabled = nullptr;
PyObject* s_calls = nullptr;
PyObject* s_native = nullptr;
PyObject* s_capture = nullptr;
PyObject* s_capture_python = nullptr;
PyObject* s_zero = nullptr;
PyObject* s_one = nullptr;

// --- CallFrame: a module call in progress --------------------------------------------------

struct CallFrameObject {
  PyObject_HEAD
  PyObject* name;
  PyObject* call;
  PyObject* op_counts;  // None until the first op (level op or all) counts into it
  char kwargs_pending;  // entered by the global hook, which sees no keyword inputs
};

extern PyTypeObject CallFrameType;

PyObject* make_frame(PyObject* name, PyObject* call) {
  auto* f = reinterpret_cast<CallFrameObject*>(CallFrameType.tp_alloc(&CallFrameType, 0));
  if (f == nullptr) return nullptr;
  Py_INCREF(name);
  f->name = name;
  Py_INCREF(call);
  f->call = call;
  Py_INCREF(Py_None);
  f->op_counts = Py_None;
  return reinterpret_cast<PyObject*>(f);
}

PyObject* frame_new(PyTypeObject* /*type*/, PyObject* args, PyObject* kwargs) {
  PyObject *name, *call;
  static const char* kw[] = {"name", "call", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:CallFrame", const_cast<char**>(kw), &name, &call)) {
    return nullptr;
  }
  return make_frame(name, call);
}

void frame_dealloc(PyObject* self) {
  auto* f = reinterpret_cast<CallFrameObject*>(self);
  Py_XDECREF(f->name);
  Py_XDECREF(f->call);
  Py_XDECREF(f->op_counts);
  Py_TYPE(self)->tp_free(self);
}

PyMemberDef frame_members[] = {
    {"name", T_OBJECT_EX, offsetof(CallFrameObject, name), READONLY, "the module's path"},
    {"call", T_OBJECT_EX, offsetof(CallFrameObject, call), READONLY, "its call index in the step"},
    {"op_counts", T_OBJECT, offsetof(CallFrameObject, op_counts), 0, "op -> times run inside this call, or None"},
    {"kwargs_pending", T_BOOL, offsetof(CallFrameObject, kwargs_pending), 0,
     "whether its keyword inputs are still to be recorded (when it is left)"},
    {nullptr, 0, 0, 0, nullptr}};

PyTypeObject CallFrameType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "accdump._C.CallFrame";
  t.tp_basicsize = sizeof(CallFrameObject);
  t.tp_flags = Py_TPFLAGS_DEFAULT;
  t.tp_doc = "CallFrame(name, call): a module call in progress (the recorder's stack holds these).";
  t.tp_new = frame_new;
  t.tp_dealloc = frame_dealloc;
  t.tp_members = frame_members;
  return t;
}();

// --- CallSite: one wrapped module's enter and leave ----------------------------------------

struct CallSiteObject {
  PyObject_HEAD
  PyObject* rec;    // the Recorder
  PyObject* stack;  // its list of CallFrames
  PyObject* name;
  PyObject* kind;
  PyObject* input_role;
  PyObject* output_role;
  PyObject* slow_enter;  // functools.partial(rec._enter, name, kind, wanted)
  PyObject* slow_leave;
  int64_t input_id, output_id;
  int inputs, outputs;  // whether this module's inputs / outputs are recorded
};

// buf.calls.get(name, 0), a new reference (null with an error set).
PyObject* call_index(PyObject* calls, PyObject* name) {
  if (!PyDict_Check(calls)) {
    PyErr_SetString(PyExc_TypeError, "accdump: the step's call counts are not a dict");
    return nullptr;
  }
  PyObject* call = PyDict_GetItemWithError(calls, name);
  if (call == nullptr) {
    if (PyErr_Occurred()) return nullptr;
    call = s_zero;
  }
  Py_INCREF(call);
  return call;
}

// Records `value` for call `call` of this module as Recorder._call_functions does: the native
// capture first, the recorder's Python capture for what it leaves; 0, or -1 with an error set.
int capture(CallSiteObject* self, PyObject* buf, PyObject* value, PyObject* call, bool input) {
  PyObject* role = input ? self->input_role : self->output_role;
  PyObject* native = PyObject_GetAttr(buf, s_native);
  if (native == nullptr) return -1;
  bool failed = false, left = true;  // left to the Python capture
  if (accdump_is_step_capture(native)) {
    const long long index = PyLong_AsLongLong(call);
    const int64_t made =
        index == -1 && PyErr_Occurred()
            ? -2
            : accdump_step_capture(native, value, self->name, index, input ? self->input_id : self->output_id,
                                   self->kind);
    failed = made == -2;
    left = made == -1;
  } else if (native != Py_None) {  // native.capture(...) < 0, as Python reads it
    PyObject* args[] = {native, value, self->name, call, role, self->kind};
    PyObject* res = PyObject_VectorcallMethod(s_capture, args, 6, nullptr);
    const int below = res != nullptr ? PyObject_RichCompareBool(res, s_zero, Py_LT) : -1;
    Py_XDECREF(res);
    failed = below < 0;
    left = below == 1;
  }
  Py_DECREF(native);
  if (failed) return -1;
  if (!left) return 0;
  PyObject* args[] = {self->rec, buf, value, self->name, call, role, self->kind};
  PyObject* res = PyObject_VectorcallMethod(s_capture_python, args, 7, nullptr);
  if (res == nullptr) return -1;
  Py_DECREF(res);
  return 0;
}

// The open step's buffer when the call takes the common path (a step is open, the stack holds
// at least `min_stack` frames and the recorder is on), as a new reference; Py_None (borrowed)
// when it does not; null with an error set.
PyObject* common_buf(CallSiteObject* self, Py_ssize_t min_stack) {
  if (self->rec == nullptr) {  // cleared by the garbage collector
    PyErr_SetString(PyExc_RuntimeError, "accdump: this CallSite's recorder is gone");
    return nullptr;
  }
  PyObject* buf = PyObject_GetAttr(self->rec, s_buf);
  if (buf == nullptr) return nullptr;
  if (buf == Py_None || PyList_GET_SIZE(self->stack) < min_stack) {
    Py_DECREF(buf);
    return Py_None;
  }
  PyObject* enabled = PyObject_GetAttr(self->rec, s_enabled);
  const int on = enabled != nullptr ? PyObject_IsTrue(enabled) : -1;
  Py_XDECREF(enabled);
  if (on <= 0 || PyList_GET_SIZE(self->stack) < min_stack) {  // `enabled` may have run Python
    Py_DECREF(buf);
    return on < 0 ? nullptr : Py_None;
  }
  return buf;
}

// enter(module, args, kwargs)
PyObject* cs_enter(PyObject* self_obj, PyObject* const* a, Py_ssize_t n) {
  auto* self = reinterpret_cast<CallSiteObject*>(self_obj);
  if (n != 3) {
    PyErr_Format(PyExc_TypeError, "CallSite.enter takes 3 arguments (%zd given)", n);
    return nullptr;
  }
  PyObject* buf = common_buf(self, 1);
  if (buf == nullptr) return nullptr;
  if (buf == Py_None) return PyObject_Vectorcall(self->slow_enter, a, 3, nullptr);
  PyObject* calls = PyObject_GetAttr(buf, s_calls);
  PyObject* call = calls != nullptr ? call_index(calls, self->name) : nullptr;  // taken when leaving
  Py_XDECREF(calls);
  PyObject* frame = call != nullptr ? make_frame(self->name, call) : nullptr;
  bool ok = frame != nullptr && PyList_Append(self->stack, frame) == 0;
  Py_XDECREF(frame);
  for (int i = 1; ok && self->inputs && i <= 2; ++i) {  // positional, then keyword inputs
    const int nonempty = PyObject_IsTrue(a[i]);
    ok = nonempty >= 0 && (nonempty == 0 || capture(self, buf, a[i], call, true) == 0);
  }
  Py_XDECREF(call);
  Py_DECREF(buf);
  if (!ok) return nullptr;
  Py_RETURN_NONE;
}

// leave(module, args, kwargs, output)
PyObject* cs_leave(PyObject* self_obj, PyObject* const* a, Py_ssize_t n) {
  auto* self = reinterpret_cast<CallSiteObject*>(self_obj);
  if (n != 4) {
    PyErr_Format(PyExc_TypeError, "CallSite.leave takes 4 arguments (%zd given)", n);
    return nullptr;
  }
  PyObject* buf = common_buf(self, 2);
  if (buf == nullptr) return nullptr;
  if (buf != Py_None) {
    // the top frame must be this module's, with nothing pending; names are compared only as
    // exact str (no Python code runs between reading the top and popping it); the rest goes
    // to the slow path
    const Py_ssize_t depth = PyList_GET_SIZE(self->stack);
    PyObject* top = PyList_GET_ITEM(self->stack, depth - 1);
    bool ours = false;
    if (Py_TYPE(top) == &CallFrameType) {
      auto* frame = reinterpret_cast<CallFrameObject*>(top);
      ours = !frame->kwargs_pending &&
             (frame->name == self->name || (PyUnicode_CheckExact(frame->name) && PyUnicode_CheckExact(self->name) &&
                                            PyUnicode_Compare(frame->name, self->name) == 0));
    }
    if (ours && PyList_SetSlice(self->stack, depth - 1, depth, nullptr) < 0) {
      Py_DECREF(buf);
      return nullptr;
    }
    if (!ours) {
      Py_DECREF(buf);
      buf = Py_None;
    }
  }
  if (buf == Py_None) return PyObject_Vectorcall(self->slow_leave, a, 4, nullptr);
  PyObject* calls = PyObject_GetAttr(buf, s_calls);
  PyObject* call = calls != nullptr ? call_index(calls, self->name) : nullptr;
  PyObject* next = call != nullptr ? PyNumber_Add(call, s_one) : nullptr;
  bool ok = next != nullptr && PyDict_SetItem(calls, self->name, next) == 0;
  Py_XDECREF(next);
  Py_XDECREF(calls);
  if (ok && self->outputs) ok = capture(self, buf, a[3], call, false) == 0;
  Py_XDECREF(call);
  Py_DECREF(buf);
  if (!ok) return nullptr;
  Py_RETURN_NONE;
}

int cs_traverse(PyObject* self_obj, visitproc visit, void* arg) {
  auto* self = reinterpret_cast<CallSiteObject*>(self_obj);
  Py_VISIT(self->rec);
  Py_VISIT(self->stack);
  Py_VISIT(self->name);
  Py_VISIT(self->kind);
  Py_VISIT(self->input_role);
  Py_VISIT(self->output_role);
  Py_VISIT(self->slow_enter);
  Py_VISIT(self->slow_leave);
  return 0;
}

int cs_clear(PyObject* self_obj) {
  auto* self = reinterpret_cast<CallSiteObject*>(self_obj);
  Py_CLEAR(self->rec);
  Py_CLEAR(self->stack);
  Py_CLEAR(self->name);
  Py_CLEAR(self->kind);
  Py_CLEAR(self->input_role);
  Py_CLEAR(self->output_role);
  Py_CLEAR(self->slow_enter);
  Py_CLEAR(self->slow_leave);
  return 0;
}

void cs_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  cs_clear(self);
  Py_TYPE(self)->tp_free(self);
}

// CallSite(rec, stack, name, kind, inputs, outputs, input_role, output_role, slow_enter, slow_leave)
PyObject* cs_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject *rec, *stack, *name, *kind, *input_role, *output_role, *slow_enter, *slow_leave;
  int inputs, outputs;
  static const char* kw[] = {"rec",         "stack",      "name",       "kind",       "inputs", "outputs",
                             "input_role",  "output_role", "slow_enter", "slow_leave", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!UUppOOOO:CallSite", const_cast<char**>(kw), &rec, &PyList_Type,
                                   &stack, &name, &kind, &inputs, &outputs, &input_role, &output_role, &slow_enter,
                                   &slow_leave)) {
    return nullptr;
  }
  const long long input_id = PyLong_AsLongLong(input_role);
  if (input_id == -1 && PyErr_Occurred()) return nullptr;
  const long long output_id = PyLong_AsLongLong(output_role);
  if (output_id == -1 && PyErr_Occurred()) return nullptr;
  auto* self = reinterpret_cast<CallSiteObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  PyObject** fields[] = {&self->rec,         &self->stack,       &self->name,       &self->kind,
                         &self->input_role,  &self->output_role, &self->slow_enter, &self->slow_leave};
  PyObject* values[] = {rec, stack, name, kind, input_role, output_role, slow_enter, slow_leave};
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); ++i) {
    Py_INCREF(values[i]);
    *fields[i] = values[i];
  }
  self->input_id = input_id;
  self->output_id = output_id;
  self->inputs = inputs;
  self->outputs = outputs;
  return reinterpret_cast<PyObject*>(self);
}

PyMethodDef cs_methods[] = {
    {"enter", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(cs_enter)), METH_FASTCALL,
     "enter(module, args, kwargs): a call of the module begins"},
    {"leave", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(cs_leave)), METH_FASTCALL,
     "leave(module, args, kwargs, output): it ended (output None when it raised)"},
    {nullptr, nullptr, 0, nullptr}};

PyTypeObject CallSiteType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "accdump._C.CallSite";
  t.tp_basicsize = sizeof(CallSiteObject);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
  t.tp_doc = "The recorder's enter and leave of one wrapped module's calls.";
  t.tp_new = cs_new;
  t.tp_dealloc = cs_dealloc;
  t.tp_traverse = cs_traverse;
  t.tp_clear = cs_clear;
  t.tp_methods = cs_methods;
  return t;
}();

}  // namespace
}  // namespace accdump

int accdump_add_type(PyObject* module, PyTypeObject* type, const char* name) {
  if (PyType_Ready(type) < 0) return -1;
  Py_INCREF(type);
  if (PyModule_AddObject(module, name, reinterpret_cast<PyObject*>(type)) < 0) {
    Py_DECREF(type);
    return -1;
  }
  return 0;
}

int accdump_add_call_types(PyObject* module) {
  using namespace accdump;
  const std::pair<PyObject**, const char*> names[] = {
      {&s_buf, "_buf"},         {&s_enabled, "enabled"}, {&s_calls, "calls"},
      {&s_native, "native"},    {&s_capture, "capture"}, {&s_capture_python, "_capture_python"}};
  for (const auto& [slot, text] : names) {
    if (*slot == nullptr && (*slot = PyUnicode_InternFromString(text)) == nullptr) return -1;
  }
  if (s_zero == nullptr && (s_zero = PyLong_FromLong(0)) == nullptr) return -1;
  if (s_one == nullptr && (s_one = PyLong_FromLong(1)) == nullptr) return -1;
  if (accdump_add_type(module, &CallFrameType, "CallFrame") < 0) return -1;
  return accdump_add_type(module, &CallSiteType, "CallSite");
}
