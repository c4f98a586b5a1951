// The recorder's hot path in native code: accdump._C.StepCapture.
//
// Module hooks hand it a module's inputs or outputs (accdump/capture/recorder.py, level
// `module`, mode `stats`); in one call it finds the tensors in them (keyed exactly as
// accdump/capture/flatten.py keys them), launches the statistics of each tensor not yet measured
// in the step into the step's rows on its device, and appends the records to the step's columns.
// At the end of the step finish() hands everything over as a few tensors and lists. Values it
// does not know how to walk (a dataclass, a tensor subclass, an unsupported dtype or device)
// are left entirely to the Python path: capture() then returns -1 having recorded nothing.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "stats_glue.h"

namespace accdump {
namespace {

constexpr int64_t kChunkRows = 256;  // accdump/capture/step_buffer.py CHUNK_ROWS
constexpr int kMaxDepth = 6;         // accdump/capture/flatten.py MAX_DEPTH
constexpr int kIndexKeys = 64;       // cached keys "0".."63" of positional items

// A tensor already measured in this step: reused while it is the same tensor, unchanged.
struct Seen {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> ref;  // keeps the address unique
  int64_t version;
  int32_t dtype, device;
  int64_t stats_index;
};

// A device's statistics rows in this step: float64 [kChunkRows, kStatsFields] chunks.
struct DeviceRows {
  at::Device device;
  StatsIntoRow stats_into;
  std::vector<at::Tensor> chunks;
  int64_t next_row = kChunkRows;
};

// A Python reference owned by the columns.
struct Ref {
  PyObject* p;
  explicit Ref(PyObject* o) : p(o) { Py_INCREF(p); }
  Ref(const Ref&) = delete;
  Ref(Ref&& o) noexcept : p(o.p) { o.p = nullptr; }
  ~Ref() { Py_XDECREF(p); }
};

struct State {
  std::vector<Ref> index_keys;
  std::array<int32_t, static_cast<size_t>(c10::ScalarType::NumOptions)> dtype_id{};
  std::vector<DeviceRows> devices;
  std::unordered_map<c10::TensorImpl*, Seen> seen;
  int64_t next_order = 0;
  // one entry per record (the ints in kInts order), dimensions of all records one after another
  std::vector<int64_t> ints, ndims, shapes, strides;
  // the step's distinct name / arg / kind strings (by identity: hooks pass the same objects
  // every call) and each one's index; records hold indices, so that the writer turns a step's
  // strings into arrays with no per-record Python
  std::vector<Ref> strings;
  std::unordered_map<PyObject*, int64_t> string_index;

  int64_t intern(PyObject* str) {
    auto it = string_index.find(str);
    if (it != string_index.end()) return it->second;
    const auto index = static_cast<int64_t>(strings.size());
    strings.emplace_back(str);
    string_index.emplace(str, index);
    return index;
  }
};

// Columns of the int64 table finish() returns.
enum IntColumn : int {
  kOrder, kCall, kRole, kDtype, kDevice, kStorageOffset, kContiguous, kStatsIndex, kName, kArg, kKind, kInts
};

struct StepCaptureObject {
  PyObject_HEAD
  State* state;
};

// The row writer of a device accdump can record, or null.
StatsIntoRow stats_into_for(const at::Device& d) {
  if (d.is_cpu()) return &stats_into_row_cpu;
  if (d.is_cuda()) return stats_into_row_cuda;
  return nullptr;
}

// A tensor the native path records: a plain torch.Tensor (or Parameter), dense, with storage,
// of a dtype the statistics read, on a device with a kernel.
bool supported(const State& s, PyObject* obj) {
  if (!THPVariable_CheckExact(obj)) return false;
  const at::Tensor& t = THPVariable_Unpack(obj);
  return t.defined() && t.layout() == at::kStrided && !t.is_nested() && t.has_storage() &&
         s.dtype_id[static_cast<size_t>(t.scalar_type())] >= 0 && stats_into_for(t.device()) != nullptr;
}

bool is_leaf(PyObject* v) {
  return v == Py_None || PyLong_Check(v) || PyFloat_Check(v) || PyUnicode_Check(v);  // bool is a long
}

bool is_dataclass_instance(PyObject* v) {
  return !PyType_Check(v) && PyObject_HasAttrString(reinterpret_cast<PyObject*>(Py_TYPE(v)), "__dataclass_fields__");
}

// The (key, value) pairs of a dict subclass as its items() gives them (flatten.py calls items():
// HF ModelOutput holds only its fields that are set), as a new list of 2-tuples; null with no
// error set when items() fails or gives something else.
PyObject* subclass_items(PyObject* obj) {
  PyObject* view = PyObject_CallMethod(obj, "items", nullptr);
  PyObject* list = view != nullptr ? PySequence_List(view) : nullptr;
  Py_XDECREF(view);
  if (list == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
    PyObject* kv = PyList_GET_ITEM(list, i);
    if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
      Py_DECREF(list);
      return nullptr;
    }
  }
  return list;
}

// Whether every tensor in `obj` can be recorded natively and every container walked as
// flatten.py walks it. Anything else (an unsupported tensor, a dict or list subclass, a
// dataclass) leaves the whole value to Python.
bool walkable(const State& s, PyObject* obj, int depth) {
  if (THPVariable_Check(obj)) return supported(s, obj);
  if (depth >= kMaxDepth) return true;  // flatten.py looks no deeper
  const bool tuple = PyTuple_Check(obj), list = PyList_CheckExact(obj), dict = PyDict_CheckExact(obj);
  if (!tuple && !list && !dict) {
    if (PyList_Check(obj)) return false;
    if (PyDict_Check(obj)) {
      PyObject* items = subclass_items(obj);
      if (items == nullptr) return false;
      bool ok = true;
      for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(items); ++i) {
        PyObject* v = PyTuple_GET_ITEM(PyList_GET_ITEM(items, i), 1);
        ok = is_leaf(v) || walkable(s, v, depth + 1);
      }
      Py_DECREF(items);
      return ok;
    }
    return !is_dataclass_instance(obj);  // other objects hold no tensors flatten.py would find
  }
  if (dict) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(obj, &pos, &k, &v)) {
      if (!is_leaf(v) && !walkable(s, v, depth + 1)) return false;
    }
    return true;
  }
  const Py_ssize_t n = tuple ? PyTuple_GET_SIZE(obj) : PyList_GET_SIZE(obj);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* v = tuple ? PyTuple_GET_ITEM(obj, i) : PyList_GET_ITEM(obj, i);
    if (!is_leaf(v) && !walkable(s, v, depth + 1)) return false;
  }
  return true;
}

// Measures `t` (a supported tensor) into a fresh row unless it was measured in this step and
// has not changed since; returns its Seen entry.
const Seen& measure(State& s, const at::Tensor& t) {
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  // an inference tensor has no version counter: its numbers are never reused
  const int64_t version = t.is_inference() ? -1 : static_cast<int64_t>(impl->version_counter().current_version());
  auto it = s.seen.find(impl);
  if (it != s.seen.end() && version >= 0 && it->second.version == version) return it->second;
  const at::Device dev = t.device();
  int32_t device = 0;
  while (device < static_cast<int32_t>(s.devices.size()) && s.devices[device].device != dev) ++device;
  if (device == static_cast<int32_t>(s.devices.size())) s.devices.push_back(DeviceRows{dev, stats_into_for(dev), {}});
  DeviceRows& rows = s.devices[device];
  if (rows.next_row == kChunkRows) {
    rows.chunks.push_back(at::zeros({kChunkRows, kStatsFields}, at::TensorOptions().dtype(at::kDouble).device(dev)));
    rows.next_row = 0;
  }
  const int64_t row = rows.next_row++;
  rows.stats_into(t, rows.chunks.back(), row);
  const int64_t index = static_cast<int64_t>(rows.chunks.size() - 1) * kChunkRows + row;
  Seen entry{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(t.getIntrusivePtr()), version,
             s.dtype_id[static_cast<size_t>(t.scalar_type())], device, index};
  if (it != s.seen.end()) {
    it->second = std::move(entry);
    return it->second;
  }
  return s.seen.emplace(impl, std::move(entry)).first->second;
}

// Records one supported tensor; returns its order in the step.
int64_t record(State& s, PyObject* obj, PyObject* name, int64_t call, int64_t role, PyObject* arg, PyObject* kind) {
  const at::Tensor& t = THPVariable_Unpack(obj);
  const Seen& seen = measure(s, t);
  const int64_t order = s.next_order++;
  const int64_t row[kInts] = {order, call, role, seen.dtype, seen.device, t.storage_offset(),
                              t.is_contiguous() ? 1 : 0, seen.stats_index, s.intern(name), s.intern(arg),
                              s.intern(kind)};
  s.ints.insert(s.ints.end(), row, row + kInts);
  s.ndims.push_back(t.dim());
  const auto sizes = t.sizes();
  const auto strides = t.strides();
  s.shapes.insert(s.shapes.end(), sizes.begin(), sizes.end());
  s.strides.insert(s.strides.end(), strides.begin(), strides.end());
  return order;
}

// "key.k" (or "k" at the top), as flatten.py builds child keys.
PyObject* child_key(const State& s, PyObject* key, PyObject* k, Py_ssize_t index) {
  if (key == nullptr || PyUnicode_GET_LENGTH(key) == 0) {
    if (k == nullptr) {
      if (index < kIndexKeys) {
        Py_INCREF(s.index_keys[index].p);
        return s.index_keys[index].p;
      }
      return PyUnicode_FromFormat("%zd", index);
    }
    return PyObject_Str(k);
  }
  if (k == nullptr) return PyUnicode_FromFormat("%U.%zd", key, index);
  PyObject* ks = PyObject_Str(k);
  if (ks == nullptr) return nullptr;
  PyObject* out = PyUnicode_FromFormat("%U.%U", key, ks);
  Py_DECREF(ks);
  return out;
}

// Records the tensors in a walkable container; returns how many, or -1 with a Python error set.
int64_t collect(State& s, PyObject* obj, PyObject* key, int depth, PyObject* name, int64_t call, int64_t role,
                PyObject* kind) {
  if (depth >= kMaxDepth) return 0;
  const bool dict = PyDict_CheckExact(obj), tuple = PyTuple_Check(obj), list = PyList_CheckExact(obj);
  const bool dict_subclass = !dict && PyDict_Check(obj);
  if (!dict && !tuple && !list && !dict_subclass) return 0;
  int64_t count = 0;
  auto visit = [&](PyObject* k, Py_ssize_t index, PyObject* v) -> bool {
    if (is_leaf(v)) return true;
    PyObject* child = child_key(s, key, k, index);
    if (child == nullptr) return false;
    int64_t n = 0;
    if (THPVariable_Check(v)) {  // flatten.py: `child or "0"`
      record(s, v, name, call, role, PyUnicode_GET_LENGTH(child) ? child : s.index_keys[0].p, kind);
      n = 1;
    } else {
      n = collect(s, v, child, depth + 1, name, call, role, kind);
    }
    Py_DECREF(child);
    if (n < 0) return false;
    count += n;
    return true;
  };
  if (dict) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(obj, &pos, &k, &v)) {
      if (!visit(k, 0, v)) return -1;
    }
  } else if (dict_subclass) {
    PyObject* items = subclass_items(obj);
    if (items == nullptr) {
      PyErr_SetString(PyExc_RuntimeError, "accdump: a dict subclass's items() changed while it was recorded");
      return -1;
    }
    bool ok = true;
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(items); ++i) {
      PyObject* kv = PyList_GET_ITEM(items, i);
      ok = visit(PyTuple_GET_ITEM(kv, 0), 0, PyTuple_GET_ITEM(kv, 1));
    }
    Py_DECREF(items);
    if (!ok) return -1;
  } else {
    const Py_ssize_t n = tuple ? PyTuple_GET_SIZE(obj) : PyList_GET_SIZE(obj);
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!visit(nullptr, i, tuple ? PyTuple_GET_ITEM(obj, i) : PyList_GET_ITEM(obj, i))) return -1;
    }
  }
  return count;
}

bool parse_common(PyObject* const* a, int64_t& call, int64_t& role) {
  call = PyLong_AsLongLong(a[2]);
  if (call == -1 && PyErr_Occurred()) return false;
  role = PyLong_AsLongLong(a[3]);
  return !(role == -1 && PyErr_Occurred());
}

bool check_nargs(Py_ssize_t n, Py_ssize_t want, const char* method) {
  if (n == want) return true;
  PyErr_Format(PyExc_TypeError, "StepCapture.%s takes %zd arguments (%zd given)", method, want, n);
  return false;
}

// capture(value, name, call, role, kind) -> records made, or -1 (nothing recorded: Python's turn)
PyObject* sc_capture(PyObject* self, PyObject* const* a, Py_ssize_t n) {
  HANDLE_TH_ERRORS
  if (!check_nargs(n, 5, "capture")) return nullptr;
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  int64_t call, role;
  if (!parse_common(a, call, role)) return nullptr;
  PyObject* value = a[0];
  if (!walkable(s, value, 0)) return PyLong_FromLong(-1);
  if (THPVariable_Check(value)) {
    record(s, value, a[1], call, role, s.index_keys[0].p, a[4]);
    return PyLong_FromLong(1);
  }
  const int64_t count = collect(s, value, nullptr, 0, a[1], call, role, a[4]);
  if (count < 0) return nullptr;
  return PyLong_FromLongLong(count);
  END_HANDLE_TH_ERRORS
}

// capture_one(tensor, name, call, role, arg, kind) -> its order, or -1 (not recorded: Python's turn)
PyObject* sc_capture_one(PyObject* self, PyObject* const* a, Py_ssize_t n) {
  HANDLE_TH_ERRORS
  if (!check_nargs(n, 6, "capture_one")) return nullptr;
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  int64_t call, role;
  if (!parse_common(a, call, role)) return nullptr;
  if (!supported(s, a[0])) return PyLong_FromLong(-1);
  return PyLong_FromLongLong(record(s, a[0], a[1], call, role, a[4], a[5]));
  END_HANDLE_TH_ERRORS
}

// take_order() -> the next order in the step, for a record the Python path makes.
PyObject* sc_take_order(PyObject* self, PyObject* /*unused*/) {
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  return PyLong_FromLongLong(s.next_order++);
}

// forget(tensor): its numbers are not reused (it was written without a version bump).
PyObject* sc_forget(PyObject* self, PyObject* obj) {
  HANDLE_TH_ERRORS
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  if (THPVariable_Check(obj)) s.seen.erase(THPVariable_Unpack(obj).unsafeGetTensorImpl());
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyObject* int_tensor(const std::vector<int64_t>& v, int64_t cols) {
  const int64_t rows = cols == 1 ? static_cast<int64_t>(v.size()) : static_cast<int64_t>(v.size()) / cols;
  at::Tensor t = cols == 1 ? at::empty({rows}, at::kLong) : at::empty({rows, cols}, at::kLong);
  if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
  return THPVariable_Wrap(std::move(t));
}

PyObject* ref_list(std::vector<Ref>& refs) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(refs.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < refs.size(); ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), refs[i].p);  // the list takes the reference
    refs[i].p = nullptr;
  }
  return list;
}

// finish() -> None when the step recorded nothing natively, else (ints int64 [n, 11]: order,
// call, role, dtype id, device id, storage offset, contiguous, stats index, name, arg and kind
// (indices into strings); ndims [n]; shapes; strides; strings; device names; each device's row
// chunks). Starts a new step.
PyObject* sc_finish(PyObject* self, PyObject* /*unused*/) {
  HANDLE_TH_ERRORS
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  PyObject* out = Py_None;
  Py_INCREF(out);
  if (!s.ndims.empty()) {
    Py_DECREF(out);
    PyObject* devices = PyList_New(static_cast<Py_ssize_t>(s.devices.size()));
    PyObject* chunks = PyList_New(static_cast<Py_ssize_t>(s.devices.size()));
    for (size_t d = 0; d < s.devices.size(); ++d) {
      PyList_SET_ITEM(devices, d, PyUnicode_FromString(s.devices[d].device.str().c_str()));
      PyObject* list = PyList_New(static_cast<Py_ssize_t>(s.devices[d].chunks.size()));
      for (size_t c = 0; c < s.devices[d].chunks.size(); ++c) {
        PyList_SET_ITEM(list, c, THPVariable_Wrap(s.devices[d].chunks[c]));
      }
      PyList_SET_ITEM(chunks, d, list);
    }
    out = Py_BuildValue("(NNNNNNN)", int_tensor(s.ints, kInts), int_tensor(s.ndims, 1), int_tensor(s.shapes, 1),
                        int_tensor(s.strides, 1), ref_list(s.strings), devices, chunks);
  }
  s.devices.clear();
  s.seen.clear();
  s.next_order = 0;
  s.ints.clear();
  s.ndims.clear();
  s.shapes.clear();
  s.strides.clear();
  s.string_index.clear();
  s.strings.clear();
  return out;
  END_HANDLE_TH_ERRORS
}

PyObject* sc_len(PyObject* self, void* /*unused*/) {
  return PyLong_FromSize_t(reinterpret_cast<StepCaptureObject*>(self)->state->ndims.size());
}

PyObject* sc_new(PyTypeObject* type, PyObject* /*args*/, PyObject* /*kwargs*/) {
  auto* self = reinterpret_cast<StepCaptureObject*>(type->tp_alloc(type, 0));
  if (self != nullptr) self->state = new State();
  return reinterpret_cast<PyObject*>(self);
}

// StepCapture(dtypes): record dtype ids index `dtypes` (a list of torch.dtype).
int sc_init(PyObject* self, PyObject* args, PyObject* kwargs) {
  PyObject* dtypes = nullptr;
  static const char* kw[] = {"dtypes", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", const_cast<char**>(kw), &dtypes)) return -1;
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  PyObject* seq = PySequence_Fast(dtypes, "StepCapture: dtypes must be a sequence of torch.dtype");
  if (seq == nullptr) return -1;
  s.dtype_id.fill(-1);
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
    PyObject* d = PySequence_Fast_GET_ITEM(seq, i);
    if (!THPDtype_Check(d)) {
      Py_DECREF(seq);
      PyErr_Format(PyExc_TypeError, "StepCapture: dtypes[%zd] is not a torch.dtype", i);
      return -1;
    }
    s.dtype_id[static_cast<size_t>(reinterpret_cast<THPDtype*>(d)->scalar_type)] = static_cast<int32_t>(i);
  }
  Py_DECREF(seq);
  s.index_keys.clear();
  for (int i = 0; i < kIndexKeys; ++i) {
    PyObject* k = PyUnicode_FromFormat("%d", i);
    if (k == nullptr) return -1;
    s.index_keys.emplace_back(k);
    Py_DECREF(k);
  }
  return 0;
}

void sc_dealloc(PyObject* self) {
  auto* obj = reinterpret_cast<StepCaptureObject*>(self);
  delete obj->state;
  Py_TYPE(self)->tp_free(self);
}

PyMethodDef sc_methods[] = {
    {"capture", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sc_capture)), METH_FASTCALL,
     "capture(value, name, call, role, kind) -> records made, or -1 when the value is left to Python"},
    {"capture_one", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sc_capture_one)), METH_FASTCALL,
     "capture_one(tensor, name, call, role, arg, kind) -> the record's order, or -1 when left to Python"},
    {"take_order", sc_take_order, METH_NOARGS, "the next order in the step, for a record made in Python"},
    {"forget", sc_forget, METH_O, "forget(tensor): do not reuse what was measured of it"},
    {"finish", sc_finish, METH_NOARGS, "the step's columns and rows (None if empty); starts a new step"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef sc_getset[] = {{"records", sc_len, nullptr, "records made natively in the open step", nullptr},
                           {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject StepCaptureType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "accdump._C.StepCapture";
  t.tp_basicsize = sizeof(StepCaptureObject);
  t.tp_flags = Py_TPFLAGS_DEFAULT;
  t.tp_doc = "The recorder's native capture of one step at a time (module level, stats mode).";
  t.tp_new = sc_new;
  t.tp_init = sc_init;
  t.tp_dealloc = sc_dealloc;
  t.tp_methods = sc_methods;
  t.tp_getset = sc_getset;
  return t;
}();

}  // namespace
}  // namespace accdump

// Adds StepCapture to the extension module (ops.cpp); -1 with a Python error on failure.
int accdump_add_capture_type(PyObject* module) {
  if (PyType_Ready(&accdump::StepCaptureType) < 0) return -1;
  Py_INCREF(&accdump::StepCaptureType);
  if (PyModule_AddObject(module, "StepCapture", reinterpret_cast<PyObject*>(&accdump::StepCaptureType)) < 0) {
    Py_DECREF(&accdump::StepCaptureType);
    return -1;
  }
  return 0;
}
