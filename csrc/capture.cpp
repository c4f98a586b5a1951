// The recorder's hot path in native code: accdump._C.StepCapture.
//
// Module hooks hand it a module's inputs or outputs (accdump/capture/recorder.py, level
// `module`, mode `stats`); in one call it finds the tensors in them (keyed exactly as
// accdump/capture/flatten.py keys them), launches the statistics of each tensor not yet measured
// in the step into the step's rows on its device, and appends the records to the step's columns.
// At the end of the step finish() hands everything over as a few tensors and lists. Values it
// does not know how to walk (a dataclass, a tensor subclass, an unsupported dtype or device)
// are left entirely to the Python path: capture() then returns -1 having recorded nothing.
//
// Deferred statistics. A statistics launch costs the host about as much as one of the model's
// own kernels, so on a model whose host sets the pace (small batches, decoding) one launch per
// captured tensor slows the run by a quarter. Tensors are therefore measured in batches, one
// launch for many (the same blocks and merge order: the same bits), while the step runs:
// a captured tensor is kept alive with its version and measured at the next flush (the batch
// is full, a new rows chunk, another stream, forget(), flush(), the end of the step). That is
// exact unless the tensor is written in place before the flush, which its version counter
// shows. The first step therefore measures every tensor at once and only watches: a record
// whose tensor is written in place later in that step is measured at capture from then on.
// A later write that the first step did not show is still caught by the version check: the
// record is measured after the write (not at all if the tensor's data moved) and reported by
// take_late() (the recorder warns), and measured at capture from then on. Writes that bump no
// version (a collective's, a CUDA graph replay's) get a flush() before them from the recorder;
// raw kernels writing a captured tensor in place are the one thing deferral cannot see
// (ACCDUMP_DEFER=none). Deferred: tensors with a version counter (not inference tensors)
// whose storage holds at most kDeferMaxBytes, on the devices the `defer` option names.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "capture.h"
#include "stats_glue.h"

namespace accdump {
namespace {

constexpr int64_t kChunkRows = 256;  // accdump/capture/step_buffer.py CHUNK_ROWS
constexpr int kMaxDepth = 6;         // accdump/capture/flatten.py MAX_DEPTH
constexpr int kIndexKeys = 64;       // cached keys "0".."63" of positional items
// Deferred statistics (see the top): the largest tensor deferred (a larger one keeps the device
// busy longer than its launch costs the host), and the most a device's pending batch holds
// (pending tensors stay alive: their memory is not reused until they are measured).
constexpr int64_t kDeferMaxBytes = int64_t{16} << 20;
constexpr int64_t kPendingMaxBytes = int64_t{64} << 20;
constexpr size_t kPendingMax = 64;

enum class Defer { kNone, kCuda, kAll };

// Parts of the capture whose host time StepCapture(timing=True) adds up (timings).
enum Part : int { kCaptureCall, kWalk, kMeasure, kFlush, kStatsCall, kRecordStream, kNewChunk, kFinish, kParts };
constexpr const char* kPartNames[kParts] = {"capture", "walk",     "measure",   "flush",
                                            "stats_call", "record_stream", "new_chunk", "finish"};

// A tensor already measured in this step: reused while it is the same tensor, unchanged.
struct Seen {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> ref;  // keeps the address unique
  int64_t version;
  int32_t dtype, device;
  int64_t stats_index;
};

// A Python reference owned by the capture.
struct Ref {
  PyObject* p;
  explicit Ref(PyObject* o) : p(o) { Py_INCREF(p); }
  Ref(const Ref&) = delete;
  Ref(Ref&& o) noexcept : p(o.p) { o.p = nullptr; }
  Ref& operator=(Ref&& o) noexcept {
    std::swap(p, o.p);
    return *this;
  }
  ~Ref() { Py_XDECREF(p); }
};

// A record whose tensor's statistics wait for the next flush.
struct Pending {
  at::Tensor tensor;  // kept alive: its memory is not reused before it is read
  int64_t version;
  const void* data;
  int64_t numel;
  int64_t row;  // in the device's last chunk
  std::string key;  // record_key(), or empty until a flush finds the record late
  Ref name, arg;
  int64_t role;
};

// A tensor measured at capture in the first step, watched for in-place writes until its end.
struct Watched {
  c10::VariableVersion counter;  // shared with the tensor: outlives it without holding its memory
  uint32_t version;
  std::string key;
};

struct Late {
  Ref name, arg;
  int64_t role;
};

// A device's statistics rows in this step: float64 [kChunkRows, kStatsFields] chunks, and the
// tensors waiting to be measured into the last one (on `pending_stream`).
struct DeviceRows {
  at::Device device;
  StatsIntoRow stats_into;
  StatsMultiIntoRows stats_multi_into;
  bool defer;
  std::vector<at::Tensor> chunks;
  int64_t next_row = kChunkRows;
  std::vector<Pending> pending;
  int64_t pending_bytes = 0;
  std::optional<c10::Stream> pending_stream;
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
  Defer defer = Defer::kCuda;
  bool watched_a_step = false;  // a step has been watched: deferral may start
  std::vector<Watched> watched;  // the first step's
  std::unordered_set<std::string> measure_at_capture;  // keys seen written in place
  std::vector<Late> late;  // records measured after an in-place write, until take_late()
  std::unordered_set<std::string> late_keys;
  int64_t stats_calls = 0;  // statistics calls made (a batch: a launch per dtype), over all steps
  bool timing = false;
  std::array<int64_t, kParts> part_ns{}, part_calls{};

  int64_t intern(PyObject* str) {
    auto it = string_index.find(str);
    if (it != string_index.end()) return it->second;
    const auto index = static_cast<int64_t>(strings.size());
    strings.emplace_back(str);
    string_index.emplace(str, index);
    return index;
  }
};

// Adds the host time of its scope to a part's total, when the capture is timed.
class PartTimer {
 public:
  PartTimer(State& s, Part part) : s_(s), part_(part), on_(s.timing) {
    if (on_) t0_ = std::chrono::steady_clock::now();
  }
  PartTimer(const PartTimer&) = delete;
  PartTimer& operator=(const PartTimer&) = delete;
  ~PartTimer() {
    if (!on_) return;
    s_.part_ns[part_] += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_).count();
    ++s_.part_calls[part_];
  }

 private:
  State& s_;
  Part part_;
  bool on_;
  std::chrono::steady_clock::time_point t0_;
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

StatsMultiIntoRows stats_multi_into_for(const at::Device& d) {
  if (d.is_cpu()) return &stats_multi_into_rows_cpu;
  if (d.is_cuda()) return stats_multi_into_rows_cuda;
  return nullptr;
}

int64_t version_of(const at::Tensor& t) {
  // an inference tensor has no version counter: its numbers are never reused nor deferred
  return t.is_inference() ? -1 : static_cast<int64_t>(t.unsafeGetTensorImpl()->version_counter().current_version());
}

std::optional<std::string> record_key(PyObject* name, int64_t role, PyObject* arg);

// Measures a device's pending tensors (one call for all, on their stream) and checks each
// one's version: a tensor written in place since its capture is measured at capture from now
// on, and its record is reported late (not measured at all if its data moved: its old storage
// may be gone).
void flush(State& s, DeviceRows& rows) {
  if (rows.pending.empty()) return;
  const PartTimer timer(s, kFlush);
  std::vector<Pending> batch;
  batch.swap(rows.pending);
  rows.pending_bytes = 0;
  rows.pending.reserve(kPendingMax);
  std::vector<at::Tensor> xs;
  std::vector<int64_t> out_rows;
  xs.reserve(batch.size());
  out_rows.reserve(batch.size());
  for (Pending& p : batch) {
    const at::Tensor& t = p.tensor;
    const bool moved = t.const_data_ptr() != p.data || t.numel() != p.numel;
    if (moved || version_of(t) != p.version) {
      if (p.key.empty()) p.key = record_key(p.name.p, p.role, p.arg.p).value_or(std::string());
      if (s.late_keys.insert(p.key).second) s.late.push_back(Late{std::move(p.name), std::move(p.arg), p.role});
      s.measure_at_capture.insert(std::move(p.key));
    }
    if (!moved) {
      xs.push_back(t);
      out_rows.push_back(p.row);
    }
  }
  if (xs.empty()) return;
  if (!rows.pending_stream) {
    const PartTimer call(s, kStatsCall);
    rows.stats_multi_into(xs, rows.chunks.back(), out_rows);
    ++s.stats_calls;
    return;
  }
  const c10::Stream stream = *rows.pending_stream;
  const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(stream.device_type());
  const c10::Stream current = impl->getStream(stream.device());
  {
    const c10::StreamGuard on_stream(stream);
    const PartTimer call(s, kStatsCall);
    rows.stats_multi_into(xs, rows.chunks.back(), out_rows);
  }
  ++s.stats_calls;
  // the tensors' memory goes back to their allocation stream when released below: not before
  // this stream has read it
  {
    const PartTimer record_stream(s, kRecordStream);
    for (const at::Tensor& t : xs) impl->recordDataPtrOnStream(t.storage().data_ptr(), stream);
  }
  if (current != stream) {  // what reads the rows next (the step's copy to the host) runs there
    c10::Event done(stream.device_type());
    done.record(stream);
    done.block(current);
  }
}

void flush_all(State& s) {
  for (DeviceRows& rows : s.devices) flush(s, rows);
}

// The key a record's deferral is learnt under (name, role and arg; the lengths keep it
// unambiguous), or nullopt when name or arg is not a str.
std::optional<std::string> record_key(PyObject* name, int64_t role, PyObject* arg) {
  Py_ssize_t n = 0, a = 0;
  const char* name_utf8 = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &n) : nullptr;
  const char* arg_utf8 = name_utf8 != nullptr && PyUnicode_Check(arg) ? PyUnicode_AsUTF8AndSize(arg, &a) : nullptr;
  if (arg_utf8 == nullptr) {
    PyErr_Clear();
    return std::nullopt;
  }
  std::string key = std::to_string(n);
  key.push_back(':');
  key.append(name_utf8, static_cast<size_t>(n));
  key.append(std::to_string(role)).push_back(':');
  key.append(arg_utf8, static_cast<size_t>(a));
  return key;
}

// Whether record_key() can build the record's key (name and arg are str with a UTF-8 form, which
// Python keeps once made: cheap after the first call).
bool has_key(PyObject* name, PyObject* arg) {
  if (!PyUnicode_Check(name) || !PyUnicode_Check(arg)) return false;
  if (PyUnicode_AsUTF8AndSize(name, nullptr) != nullptr && PyUnicode_AsUTF8AndSize(arg, nullptr) != nullptr) return true;
  PyErr_Clear();
  return false;
}

bool is_leaf(PyObject* v) {
  return v == Py_None || PyLong_Check(v) || PyFloat_Check(v) || PyUnicode_Check(v);  // bool is a long
}

// Whether `v`'s class has __dataclass_fields__ (dataclasses.is_dataclass), looked up along its
// MRO: a failed attribute lookup would build and drop an AttributeError on every call.
bool is_dataclass_instance(PyObject* v) {
  static PyObject* const fields = PyUnicode_InternFromString("__dataclass_fields__");
  PyObject* mro = Py_TYPE(v)->tp_mro;
  if (PyType_Check(v) || fields == nullptr || mro == nullptr || !PyTuple_Check(mro)) return false;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); ++i) {
    PyObject* dict = reinterpret_cast<PyTypeObject*>(PyTuple_GET_ITEM(mro, i))->tp_dict;
    if (dict == nullptr) continue;  // a static builtin type (3.12): none has the attribute
    const int found = PyDict_Contains(dict, fields);
    if (found < 0) PyErr_Clear();  // as hasattr() would
    if (found == 1) return true;
  }
  return false;
}

// torch.Tensor or a subclass of it; containers are answered without isinstance(), which is
// slow for anything but a tensor.
bool is_tensor(PyObject* v) {
  if (THPVariable_CheckExact(v)) return true;
  if (PyTuple_Check(v) || PyList_Check(v) || PyDict_Check(v)) return false;
  return THPVariable_Check(v);
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
  if (is_tensor(obj)) return supported(s, obj);
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

// Measures `t` (a supported tensor, captured for the record `name`, `role`, `arg`) into a fresh
// row unless it was measured in this step and has not changed since; returns its Seen entry.
// The statistics are taken now or at the next flush (see the top).
const Seen& measure(State& s, const at::Tensor& t, PyObject* name, int64_t role, PyObject* arg) {
  const PartTimer timer(s, kMeasure);
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  const int64_t version = version_of(t);
  auto it = s.seen.find(impl);
  if (it != s.seen.end() && version >= 0 && it->second.version == version) return it->second;
  const at::Device dev = t.device();
  int32_t device = 0;
  while (device < static_cast<int32_t>(s.devices.size()) && s.devices[device].device != dev) ++device;
  if (device == static_cast<int32_t>(s.devices.size())) {
    const bool defer = s.defer == Defer::kAll || (s.defer == Defer::kCuda && dev.is_cuda());
    s.devices.push_back(DeviceRows{dev, stats_into_for(dev), stats_multi_into_for(dev), defer});
  }
  DeviceRows& rows = s.devices[device];
  // what waiting would keep alive: the whole storage (a slice of a large tensor is not deferred)
  const int64_t storage_bytes = static_cast<int64_t>(t.storage().nbytes());
  bool deferrable = rows.defer && version >= 0 && storage_bytes <= kDeferMaxBytes && rows.stats_multi_into != nullptr;
  std::optional<std::string> key;  // built only when needed: to watch (first step) or to look up
  if (deferrable && (!s.watched_a_step || !s.measure_at_capture.empty())) {
    key = record_key(name, role, arg);
    deferrable = key && s.measure_at_capture.count(*key) == 0;
  } else if (deferrable) {
    deferrable = has_key(name, arg);  // a late record's key is built at the flush that finds it
  }
  const bool defer_now = deferrable && s.watched_a_step;
  if (defer_now && !dev.is_cpu()) {
    const c10::Stream stream = c10::impl::getDeviceGuardImpl(dev.type())->getStream(dev);
    if (rows.pending_stream != stream) {
      flush(s, rows);
      rows.pending_stream = stream;
    }
  }
  if (rows.next_row == kChunkRows) {
    flush(s, rows);  // pending rows are in the last chunk
    const PartTimer new_chunk(s, kNewChunk);
    rows.chunks.push_back(at::zeros({kChunkRows, kStatsFields}, at::TensorOptions().dtype(at::kDouble).device(dev)));
    rows.next_row = 0;
  }
  const int64_t row = rows.next_row++;
  if (defer_now) {
    rows.pending.push_back(
        Pending{t, version, t.const_data_ptr(), t.numel(), row, key ? std::move(*key) : std::string(), Ref(name),
                Ref(arg), role});
    rows.pending_bytes += storage_bytes;
    if (rows.pending.size() >= kPendingMax || rows.pending_bytes >= kPendingMaxBytes) flush(s, rows);
  } else {
    const PartTimer call(s, kStatsCall);
    rows.stats_into(t, rows.chunks.back(), row);
    ++s.stats_calls;
    if (deferrable && key) {  // the first step: watched until its end
      s.watched.push_back(Watched{impl->version_counter(), static_cast<uint32_t>(version), std::move(*key)});
    }
  }
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
  const Seen& seen = measure(s, t, name, role, arg);
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
    PyObject* new_key = child_key(s, key, k, index);
    if (new_key == nullptr) return false;
    const Ref child(new_key);  // released on every way out, a C++ exception's included
    Py_DECREF(new_key);
    int64_t n = 0;
    if (is_tensor(v)) {  // flatten.py: `child or "0"`
      record(s, v, name, call, role, PyUnicode_GET_LENGTH(child.p) ? child.p : s.index_keys[0].p, kind);
      n = 1;
    } else {
      n = collect(s, v, child.p, depth + 1, name, call, role, kind);
    }
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

// Records the tensors in `value`: how many, -1 when the value is left to Python (nothing
// recorded), or -2 with a Python error set.
int64_t capture_value(State& s, PyObject* value, PyObject* name, int64_t call, int64_t role, PyObject* kind) {
  const PartTimer timer(s, kCaptureCall);
  bool ok;
  {
    const PartTimer walk(s, kWalk);
    ok = walkable(s, value, 0);
  }
  if (!ok) return -1;
  if (is_tensor(value)) {
    record(s, value, name, call, role, s.index_keys[0].p, kind);
    return 1;
  }
  const int64_t count = collect(s, value, nullptr, 0, name, call, role, kind);
  return count < 0 ? -2 : count;
}

// capture(value, name, call, role, kind) -> records made, or -1 (nothing recorded: Python's turn)
PyObject* sc_capture(PyObject* self, PyObject* const* a, Py_ssize_t n) {
  HANDLE_TH_ERRORS
  if (!check_nargs(n, 5, "capture")) return nullptr;
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  int64_t call, role;
  if (!parse_common(a, call, role)) return nullptr;
  const int64_t count = capture_value(s, a[0], a[1], call, role, a[4]);
  if (count == -2) return nullptr;
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
  if (THPVariable_Check(obj)) {
    flush_all(s);  // it may be waiting (a write without a version bump is coming or came)
    s.seen.erase(THPVariable_Unpack(obj).unsafeGetTensorImpl());
  }
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// flush(): measures every waiting tensor now (before a write the version counter does not
// show, such as a collective's, or before a CUDA graph capture begins).
PyObject* sc_flush(PyObject* self, PyObject* /*unused*/) {
  HANDLE_TH_ERRORS
  flush_all(*reinterpret_cast<StepCaptureObject*>(self)->state);
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

// take_late() -> the records measured after an in-place write since the last call, as
// (name, role, arg) (each is measured at capture from then on).
PyObject* sc_take_late(PyObject* self, PyObject* /*unused*/) {
  HANDLE_TH_ERRORS
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  std::vector<Late> late;
  late.swap(s.late);
  s.late_keys.clear();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(late.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < late.size(); ++i) {
    PyObject* role = PyLong_FromLongLong(late[i].role);
    PyObject* item = role != nullptr ? PyTuple_Pack(3, late[i].name.p, role, late[i].arg.p) : nullptr;
    Py_XDECREF(role);
    if (item == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), item);
  }
  return list;
  END_HANDLE_TH_ERRORS
}

// Forgets the open step: a new one starts.
void reset_step(State& s) {
  for (DeviceRows& rows : s.devices) rows.pending.clear();
  s.devices.clear();
  s.seen.clear();
  s.watched.clear();
  s.next_order = 0;
  s.ints.clear();
  s.ndims.clear();
  s.shapes.clear();
  s.strides.clear();
  s.string_index.clear();
  s.strings.clear();
}

// Ends the watched first step: records whose tensors were written in place after their
// capture are measured at capture from now on.
void end_watch(State& s) {
  if (s.watched_a_step || s.ndims.empty()) return;
  for (const Watched& w : s.watched) {
    if (w.counter.current_version() != w.version) s.measure_at_capture.insert(w.key);
  }
  s.watched_a_step = true;
}

// finish() -> None when the step recorded nothing natively, else (ints int64 [n, 11]: order,
// call, role, dtype id, device id, storage offset, contiguous, stats index, name, arg and kind
// (indices into strings); ndims [n]; shapes; strides; strings; device names; each device's row
// chunks). Measures what waits first; starts a new step (also when it raises).
PyObject* sc_finish(PyObject* self, PyObject* /*unused*/) {
  HANDLE_TH_ERRORS
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  const PartTimer timer(s, kFinish);
  PyObject* out = nullptr;
  try {
    flush_all(s);
    end_watch(s);
    if (s.ndims.empty()) {
      Py_INCREF(Py_None);
      out = Py_None;
    } else {
      PyObject* devices = PyList_New(static_cast<Py_ssize_t>(s.devices.size()));
      PyObject* chunks = PyList_New(static_cast<Py_ssize_t>(s.devices.size()));
      for (size_t d = 0; devices != nullptr && chunks != nullptr && d < s.devices.size(); ++d) {
        PyList_SET_ITEM(devices, d, PyUnicode_FromString(s.devices[d].device.str().c_str()));
        PyObject* list = PyList_New(static_cast<Py_ssize_t>(s.devices[d].chunks.size()));
        for (size_t c = 0; list != nullptr && c < s.devices[d].chunks.size(); ++c) {
          PyList_SET_ITEM(list, c, THPVariable_Wrap(s.devices[d].chunks[c]));
        }
        PyList_SET_ITEM(chunks, d, list);
      }
      out = Py_BuildValue("(NNNNNNN)", int_tensor(s.ints, kInts), int_tensor(s.ndims, 1), int_tensor(s.shapes, 1),
                          int_tensor(s.strides, 1), ref_list(s.strings), devices, chunks);
    }
  } catch (...) {
    reset_step(s);
    throw;
  }
  reset_step(s);
  return out;
  END_HANDLE_TH_ERRORS
}

PyObject* sc_len(PyObject* self, void* /*unused*/) {
  return PyLong_FromSize_t(reinterpret_cast<StepCaptureObject*>(self)->state->ndims.size());
}

PyObject* sc_stats_calls(PyObject* self, void* /*unused*/) {
  return PyLong_FromLongLong(reinterpret_cast<StepCaptureObject*>(self)->state->stats_calls);
}

PyObject* sc_pending(PyObject* self, void* /*unused*/) {
  size_t n = 0;
  for (const DeviceRows& rows : reinterpret_cast<StepCaptureObject*>(self)->state->devices) {
    n += rows.pending.size();
  }
  return PyLong_FromSize_t(n);
}

// timings -> {part: (times, seconds)} of host time in the capture's parts since it was made
// (StepCapture(timing=True); parts nest: measure holds the flushes a full batch starts).
PyObject* sc_timings(PyObject* self, void* /*unused*/) {
  const State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  PyObject* out = PyDict_New();
  for (int p = 0; out != nullptr && p < kParts; ++p) {
    PyObject* v = Py_BuildValue("(Ld)", static_cast<long long>(s.part_calls[p]), static_cast<double>(s.part_ns[p]) * 1e-9);
    if (v == nullptr || PyDict_SetItemString(out, kPartNames[p], v) < 0) Py_CLEAR(out);
    Py_XDECREF(v);
  }
  return out;
}

PyObject* sc_new(PyTypeObject* type, PyObject* /*args*/, PyObject* /*kwargs*/) {
  auto* self = reinterpret_cast<StepCaptureObject*>(type->tp_alloc(type, 0));
  if (self != nullptr) self->state = new State();
  return reinterpret_cast<PyObject*>(self);
}

// StepCapture(dtypes, defer="cuda", *, timing=False): record dtype ids index `dtypes` (a list of
// torch.dtype); `defer` names the devices whose statistics are deferred: "cuda", "all" or
// "none"; `timing` adds up the host time of the capture's parts (timings).
int sc_init(PyObject* self, PyObject* args, PyObject* kwargs) {
  PyObject* dtypes = nullptr;
  const char* defer = "cuda";
  int timing = 0;
  static const char* kw[] = {"dtypes", "defer", "timing", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|s$p", const_cast<char**>(kw), &dtypes, &defer, &timing)) {
    return -1;
  }
  State& s = *reinterpret_cast<StepCaptureObject*>(self)->state;
  s.timing = timing != 0;
  const std::string d(defer);
  if (d != "cuda" && d != "all" && d != "none") {
    PyErr_Format(PyExc_ValueError, "StepCapture: defer must be \"cuda\", \"all\" or \"none\", got \"%s\"", defer);
    return -1;
  }
  s.defer = d == "cuda" ? Defer::kCuda : (d == "all" ? Defer::kAll : Defer::kNone);
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
    {"flush", sc_flush, METH_NOARGS, "measures every tensor whose statistics wait, now"},
    {"take_late", sc_take_late, METH_NOARGS, "(name, role, arg) of records measured after an in-place write"},
    {"finish", sc_finish, METH_NOARGS, "the step's columns and rows (None if empty); starts a new step"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef sc_getset[] = {
    {"records", sc_len, nullptr, "records made natively in the open step", nullptr},
    {"stats_calls", sc_stats_calls, nullptr, "statistics calls made so far, all steps (a batch is one)", nullptr},
    {"pending", sc_pending, nullptr, "tensors whose statistics wait for the next flush", nullptr},
    {"timings", sc_timings, nullptr, "{part: (times, seconds)} of host time, with StepCapture(timing=True)", nullptr},
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

bool accdump_is_step_capture(PyObject* obj) { return Py_TYPE(obj) == &accdump::StepCaptureType; }

int64_t accdump_step_capture(PyObject* step_capture, PyObject* value, PyObject* name, int64_t call, int64_t role,
                             PyObject* kind) {
  HANDLE_TH_ERRORS
  accdump::State& s = *reinterpret_cast<accdump::StepCaptureObject*>(step_capture)->state;
  return accdump::capture_value(s, value, name, call, role, kind);
  END_HANDLE_TH_ERRORS_RET(-2)
}

int accdump_add_capture_type(PyObject* module) {
  return accdump_add_type(module, &accdump::StepCaptureType, "StepCapture");
}
