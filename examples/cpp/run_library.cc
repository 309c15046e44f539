// Run a library exported by `convc compile` from C++, with nothing but tvm-ffi.
//
//   ./run_library lib.so            (reads lib.json beside it)
//
// For every function the manifest lists (forward, grad_input, grad_weight) it makes its own
// inputs, calls the function through tvm::ffi::Module, and compares the result with a direct
// loop-nest convolution computed here in double precision. It also shows that a call with a
// wrong shape raises a tvm::ffi::Error instead of crashing, and that a DLTensor over plain,
// unaligned memory is accepted. Prints one line per check; exits 0 when every check passes.
//
// float32 and float64 libraries; any rank (1-D to 3-D), layout family, stride, padding,
// dilation and groups; fused layers: forward's epilogue (bias, scale/shift, residual, activation:
// y = act((conv + b) * scale + shift + residual)) and the adjoints' prologue through the
// activation (dy * act'(saved), saved the pre-activation or the output), as the manifest's spec,
// "epilogue" and "prologue" entries say.
//
// Prepacked weights (a library from `convc compile --prepacked`): where the manifest lists
// "<op>_prepack" / "<op>_packed" beside forward or grad_input, the weight is packed once
// (<op>_prepack(w, pack), the pack's shape and dtype from the manifest's "pack") and the packed
// function is called twice on that one pack (the weight's place taken by it), each result checked
// against the same reference.

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

using Shape = std::vector<int64_t>;

// ---- the convolution, from the manifest's "spec" ----------------------------------------------

struct Conv {
  std::string layout, dtype, padding_mode = "zeros";
  int64_t batch = 0, in_channels = 0, out_channels = 0, groups = 1;
  Shape in_size, kernel, stride, dilation, pad_before, out_size;
  bool bias = false, scale_shift = false, residual = false;
  std::string activation, derivative_from;  // empty: none
  double negative_slope = 0.01;
  bool channels_last() const { return layout.back() == 'C'; }
  size_t ndim() const { return in_size.size(); }
};

int64_t Int(const ffi::Any& value) { return value.cast<int64_t>(); }

Shape Ints(const ffi::Any& value) {
  Shape out;
  for (const ffi::Any& v : value.cast<ffi::json::Array>()) out.push_back(Int(v));
  return out;
}

Conv ReadConv(const ffi::json::Object& spec) {
  Conv c;
  c.layout = std::string(spec.at("layout").cast<ffi::String>());
  c.dtype = std::string(spec.at("dtype").cast<ffi::String>());
  c.batch = Int(spec.at("batch"));
  c.in_channels = Int(spec.at("in_channels"));
  c.out_channels = Int(spec.at("out_channels"));
  c.groups = Int(spec.at("groups"));
  c.bias = spec.at("bias").cast<bool>();
  if (spec.count("padding_mode")) {
    c.padding_mode = std::string(spec.at("padding_mode").cast<ffi::String>());
  }
  auto text = [&](const char* key) {
    std::optional<ffi::String> v = spec.count(key) ? spec.at(key).try_cast<ffi::String>()
                                                   : std::nullopt;
    return v ? std::string(*v) : std::string();
  };
  c.scale_shift = spec.count("scale_shift") && spec.at("scale_shift").cast<bool>();
  c.residual = spec.count("residual") && spec.at("residual").cast<bool>();
  c.activation = text("activation");
  c.derivative_from = text("derivative_from");
  if (spec.count("negative_slope")) c.negative_slope = spec.at("negative_slope").cast<double>();
  c.in_size = Ints(spec.at("in_size"));
  c.kernel = Ints(spec.at("kernel"));
  c.stride = Ints(spec.at("stride"));
  c.dilation = Ints(spec.at("dilation"));
  c.pad_before = Ints(spec.at("pad_before"));
  Shape pad_after = Ints(spec.at("pad_after"));
  for (size_t d = 0; d < c.ndim(); ++d) {
    c.out_size.push_back((c.in_size[d] + c.pad_before[d] + pad_after[d] -
                          c.dilation[d] * (c.kernel[d] - 1) - 1) / c.stride[d] + 1);
  }
  return c;
}

int64_t Product(const Shape& shape) {
  int64_t n = 1;
  for (int64_t v : shape) n *= v;
  return n;
}

// Row-major offset of an activation element (n, c, *pos) in NC... or N...C order.
int64_t DataOffset(const Conv& c, int64_t n, int64_t ch, int64_t channels, const Shape& size,
                   const Shape& pos) {
  int64_t offset = n;
  if (!c.channels_last()) offset = offset * channels + ch;
  for (size_t d = 0; d < pos.size(); ++d) offset = offset * size[d] + pos[d];
  if (c.channels_last()) offset = offset * channels + ch;
  return offset;
}

// Row-major offset of a weight element: (o, i, *taps) channels-first, (*taps, i, o) channels-last.
int64_t WeightOffset(const Conv& c, int64_t o, int64_t i, const Shape& taps) {
  int64_t per_group = c.in_channels / c.groups;
  if (c.channels_last()) {
    int64_t offset = 0;
    for (size_t d = 0; d < taps.size(); ++d) offset = offset * c.kernel[d] + taps[d];
    return (offset * per_group + i) * c.out_channels + o;
  }
  int64_t offset = o * per_group + i;
  for (size_t d = 0; d < taps.size(); ++d) offset = offset * c.kernel[d] + taps[d];
  return offset;
}

// The input position a padded position `pos` (relative to the input, may be outside it) reads
// under the padding mode; false where it reads a zero (padding_mode "zeros").
bool Source(const Conv& c, int64_t extent, int64_t& pos) {
  if (pos >= 0 && pos < extent) return true;
  if (c.padding_mode == "reflect") pos = pos < 0 ? -pos : 2 * (extent - 1) - pos;
  else if (c.padding_mode == "replicate") pos = pos < 0 ? 0 : extent - 1;
  else if (c.padding_mode == "circular") pos = pos < 0 ? pos + extent : pos - extent;
  else return false;
  return true;
}

// Advance a multi-index over `extent`; false after the last one.
bool Next(Shape& index, const Shape& extent) {
  for (size_t d = index.size(); d-- > 0;) {
    if (++index[d] < extent[d]) return true;
    index[d] = 0;
  }
  return false;
}

// PyTorch's activations and the derivatives its autograd takes (convc.reference has the same).
double Activate(const Conv& c, double z) {
  const std::string& a = c.activation;
  double s = 1.0 / (1.0 + std::exp(-z));
  if (a == "relu") return std::max(z, 0.0);
  if (a == "relu6") return std::min(std::max(z, 0.0), 6.0);
  if (a == "leaky_relu") return z >= 0 ? z : z * c.negative_slope;
  if (a == "sigmoid") return s;
  if (a == "silu") return z * s;
  if (a == "gelu") return 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)));
  if (a == "gelu_tanh") {
    return 0.5 * z * (1 + std::tanh(std::sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)));
  }
  if (a == "hardswish") return z * std::min(std::max(z + 3, 0.0), 6.0) / 6;
  return z;
}

// act'(v), v the pre-activation or, with derivative_from "output", the activation's output.
double Derivative(const Conv& c, double v) {
  const std::string& a = c.activation;
  bool from_output = c.derivative_from == "output";
  double s = from_output ? v : 1.0 / (1.0 + std::exp(-v));
  if (a == "relu") return v > 0;
  if (a == "relu6") return v > 0 && v < 6;
  if (a == "leaky_relu") return v > 0 ? 1.0 : c.negative_slope;
  if (a == "sigmoid") return s * (1 - s);
  if (a == "silu") return s * (1 + v * (1 - s));
  if (a == "gelu") {
    return 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-v * v / 2) / std::sqrt(2 * M_PI);
  }
  if (a == "gelu_tanh") {
    double beta = std::sqrt(2 / M_PI), t = std::tanh(beta * (v + 0.044715 * v * v * v));
    return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * beta * (1 + 3 * 0.044715 * v * v);
  }
  if (a == "hardswish") return v < -3 ? 0.0 : v <= 3 ? v / 3 + 0.5 : 1.0;
  return 1.0;
}

struct Reference {
  std::vector<double> y, dx, dw;
};

// The three results from one loop nest: every (output element, tap) pair contributes
// x * w to y, dy * w to dx and x * dy to dw, x read where the padding mode says (Source): a ring
// element's dx goes to the input element it copies.
Reference Convolve(const Conv& c, const std::vector<double>& x, const std::vector<double>& w,
                   const std::vector<double>& b, const std::vector<double>& dy) {
  Reference r;
  r.y.assign(c.batch * c.out_channels * Product(c.out_size), 0.0);
  r.dx.assign(x.size(), 0.0);
  r.dw.assign(w.size(), 0.0);
  int64_t in_per_group = c.in_channels / c.groups, out_per_group = c.out_channels / c.groups;
  for (int64_t n = 0; n < c.batch; ++n) {
    for (int64_t o = 0; o < c.out_channels; ++o) {
      Shape p(c.ndim(), 0);
      do {
        int64_t yo = DataOffset(c, n, o, c.out_channels, c.out_size, p);
        double acc = c.bias ? b[o] : 0.0;
        for (int64_t i = 0; i < in_per_group; ++i) {
          int64_t ch = (o / out_per_group) * in_per_group + i;
          Shape tap(c.ndim(), 0), pos(c.ndim());
          do {
            bool inside = true;
            for (size_t d = 0; d < c.ndim(); ++d) {
              pos[d] = p[d] * c.stride[d] + tap[d] * c.dilation[d] - c.pad_before[d];
              inside = inside && Source(c, c.in_size[d], pos[d]);
            }
            if (!inside) continue;
            int64_t xo = DataOffset(c, n, ch, c.in_channels, c.in_size, pos);
            int64_t wo = WeightOffset(c, o, i, tap);
            acc += x[xo] * w[wo];
            r.dx[xo] += dy[yo] * w[wo];
            r.dw[wo] += x[xo] * dy[yo];
          } while (Next(tap, c.kernel));
        }
        r.y[yo] = acc;
      } while (Next(p, c.out_size));
    }
  }
  return r;
}

// ---- tensors -------------------------------------------------------------------------------

// 64-byte aligned CPU memory for tvm::ffi::Tensor::FromNDAlloc.
struct AlignedAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = (ffi::GetDataSize(*tensor) + 63) / 64 * 64;
    tensor->data = std::aligned_alloc(64, bytes ? bytes : 64);
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

DLDataType DType(const std::string& name) {
  if (name == "float32") return DLDataType{kDLFloat, 32, 1};
  if (name == "float64") return DLDataType{kDLFloat, 64, 1};
  throw std::runtime_error("this example handles float32 and float64 libraries, not " + name);
}

ffi::Tensor NewTensor(const Shape& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                  dtype, DLDevice{kDLCPU, 0});
}

ffi::Tensor FromValues(const Shape& shape, DLDataType dtype, const std::vector<double>& values) {
  ffi::Tensor t = NewTensor(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype.bits == 32) static_cast<float*>(t.data_ptr())[i] = static_cast<float>(values[i]);
    else static_cast<double*>(t.data_ptr())[i] = values[i];
  }
  return t;
}

std::vector<double> Values(const ffi::Tensor& t) {
  std::vector<double> out(t.numel());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = t.dtype().bits == 32 ? static_cast<const float*>(t.data_ptr())[i]
                                  : static_cast<const double*>(t.data_ptr())[i];
  }
  return out;
}

// Deterministic values in [-1, 1): a 64-bit LCG, the same on every machine.
std::vector<double> Data(int64_t count, uint64_t seed) {
  std::vector<double> out(count);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (double& v : out) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<double>(state >> 11) / 4503599627370496.0 - 1.0;  // 2^52
  }
  return out;
}

// Largest |got - want| relative to the largest |want| (at least 1).
double Error(const std::vector<double>& got, const std::vector<double>& want) {
  double scale = 1.0, worst = 0.0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
  return worst / scale;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string ManifestPath(const std::string& library) {
  size_t slash = library.find_last_of('/'), dot = library.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) {
    return library + ".json";
  }
  return library.substr(0, dot) + ".json";
}

// dlopen searches the system's library directories for a name without a slash, but a file named
// on the command line means that file: a bare name gets "./".
std::string AsFilePath(const std::string& name) {
  return name.find('/') == std::string::npos ? "./" + name : name;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s LIB.so  (LIB.json, its manifest, beside it)\n", argv[0]);
    return 2;
  }
  std::string library = argv[1];
  int failures = 0;
  try {
    ffi::json::Object manifest =
        ffi::json::Parse(ReadFile(ManifestPath(library))).cast<ffi::json::Object>();
    ffi::Module module = ffi::Module::LoadFromFile(AsFilePath(library));
    ffi::json::Object functions = manifest.at("functions").cast<ffi::json::Object>();
    std::printf("loaded %s: %d functions, target %s\n", library.c_str(),
                static_cast<int>(functions.size()),
                std::string(ffi::json::Stringify(manifest.at("target"))).c_str());

    for (const auto& [key, value] : functions) {
      std::string name(key.cast<ffi::String>());
      ffi::json::Object entry = value.cast<ffi::json::Object>();
      if (entry.count("pack")) continue;  // run below, with the op whose weight it packs
      std::string op(entry.at("op").cast<ffi::String>());
      Conv c = ReadConv(entry.at("spec").cast<ffi::json::Object>());
      DLDataType dtype = DType(c.dtype);
      double tolerance = dtype.bits == 32 ? 2e-5 : 1e-11;  // as the Python tests (conftest.py)

      std::map<std::string, Shape> shapes;
      std::vector<std::string> names;
      for (const ffi::Any& arg : entry.at("args").cast<ffi::json::Array>()) {
        ffi::json::Object a = arg.cast<ffi::json::Object>();
        std::string arg_name(a.at("name").cast<ffi::String>());
        shapes[arg_name] = Ints(a.at("shape"));
        names.push_back(arg_name);
      }
      Shape x_shape = op == "grad_input" ? shapes["dx"] : shapes["x"];
      Shape w_shape = op == "grad_weight" ? shapes["dw"] : shapes["w"];
      Shape y_shape = op == "forward" ? shapes["y"] : shapes["dy"];
      std::vector<double> x = Data(Product(x_shape), 1), w = Data(Product(w_shape), 2);
      std::vector<double> dy = Data(Product(y_shape), 3), b = Data(c.out_channels, 4);
      std::vector<double> scale = Data(c.out_channels, 5), shift = Data(c.out_channels, 6);
      std::vector<double> residual = Data(Product(y_shape), 7), saved = Data(Product(y_shape), 8);
      for (double& v : saved) v = 5.5 * v + 1.5;  // over every piece of the activations: [-4, 7)
      if (c.derivative_from == "output") {
        for (double& v : saved) v = Activate(c, v);
      }
      // Round the inputs to the library's precision so the reference sees the same numbers.
      if (dtype.bits == 32) {
        for (auto* v : {&x, &w, &dy, &b, &scale, &shift, &residual, &saved}) {
          for (double& e : *v) e = static_cast<float>(e);
        }
      }
      // The adjoints' prologue: the convolution's gradient is dy * act'(saved).
      std::vector<double> dconv = dy;
      if (op != "forward" && !c.derivative_from.empty()) {
        for (size_t i = 0; i < dconv.size(); ++i) dconv[i] = dy[i] * Derivative(c, saved[i]);
      }
      Reference want = Convolve(c, x, w, b, dconv);
      if (op == "forward") {  // the epilogue, per element (o: the element's output channel)
        int64_t spatial = Product(c.out_size);
        for (size_t i = 0; i < want.y.size(); ++i) {
          int64_t o = c.channels_last() ? i % c.out_channels : (i / spatial) % c.out_channels;
          double v = want.y[i];
          if (c.scale_shift) v = v * scale[o] + shift[o];
          if (c.residual) v += residual[i];
          want.y[i] = Activate(c, v);
        }
      }

      std::map<std::string, ffi::Tensor> tensors = {
          {"x", FromValues(x_shape, dtype, x)}, {"w", FromValues(w_shape, dtype, w)},
          {"b", FromValues({c.out_channels}, dtype, b)}, {"dy", FromValues(y_shape, dtype, dy)},
          {"scale", FromValues({c.out_channels}, dtype, scale)},
          {"shift", FromValues({c.out_channels}, dtype, shift)},
          {"residual", FromValues(y_shape, dtype, residual)},
          {"pre_activation", FromValues(y_shape, dtype, saved)},
          {"activation_output", FromValues(y_shape, dtype, saved)},
          {"y", NewTensor(y_shape, dtype)}, {"dx", NewTensor(x_shape, dtype)},
          {"dw", NewTensor(w_shape, dtype)}};
      std::vector<ffi::AnyView> args;
      for (const std::string& arg : names) args.push_back(tensors.at(arg));

      ffi::Function function = module->GetFunction(name).value();
      ffi::Any unused;
      function.CallPacked(args.data(), static_cast<int32_t>(args.size()), &unused);
      const std::string& out = names.back();
      const std::vector<double>& expected =
          out == "y" ? want.y : out == "dx" ? want.dx : want.dw;
      double error = Error(Values(tensors.at(out)), expected);
      bool ok = error <= tolerance;
      failures += !ok;
      std::printf("%-12s %-12s max relative error %.3g (tolerance %.0e) %s\n", name.c_str(),
                  op.c_str(), error, tolerance, ok ? "PASS" : "FAIL");
      for (const char* part : {"epilogue", "prologue"}) {
        if (entry.count(part) && !entry.at(part).cast<ffi::json::Array>().empty()) {
          std::printf("%-12s %-12s %s %s\n", name.c_str(), op.c_str(), part,
                      std::string(ffi::json::Stringify(entry.at(part))).c_str());
        }
      }

      // A DLTensor over std::vector memory one element past an aligned address: accepted.
      std::vector<char> raw(ffi::GetDataSize(tensors.at(out)) + 128);
      size_t element = dtype.bits / 8;
      char* base = raw.data() + (64 - reinterpret_cast<uintptr_t>(raw.data()) % 64) + element;
      Shape out_shape = shapes.at(out);
      DLTensor plain{base, DLDevice{kDLCPU, 0}, static_cast<int32_t>(out_shape.size()), dtype,
                     out_shape.data(), nullptr, 0};
      args.back() = ffi::AnyView(&plain);
      function.CallPacked(args.data(), static_cast<int32_t>(args.size()), &unused);
      std::vector<double> got(Product(out_shape));
      for (size_t i = 0; i < got.size(); ++i) {
        got[i] = dtype.bits == 32 ? reinterpret_cast<const float*>(base)[i]
                                  : reinterpret_cast<const double*>(base)[i];
      }
      double unaligned_error = Error(got, expected);
      ok = unaligned_error <= tolerance;
      failures += !ok;
      std::printf("%-12s %-12s unaligned DLTensor output: error %.3g %s\n", name.c_str(),
                  op.c_str(), unaligned_error, ok ? "PASS" : "FAIL");

      // The wrong shape: the library checks its arguments and raises.
      Shape wrong = out_shape;
      wrong.back() += 1;
      args.back() = NewTensor(wrong, dtype);
      try {
        function.CallPacked(args.data(), static_cast<int32_t>(args.size()), &unused);
        std::printf("%-12s %-12s wrong output shape: accepted FAIL\n", name.c_str(), op.c_str());
        ++failures;
      } catch (const ffi::Error& err) {
        std::string first = err.message().substr(0, err.message().find('\n'));
        std::printf("%-12s %-12s wrong output shape: raised %s (%s) PASS\n", name.c_str(),
                    op.c_str(), err.kind().c_str(), first.c_str());
      }

      // Prepacked: pack w once, then packed calls with the pack in w's place.
      ffi::String prepack_name(name + "_prepack");
      if (functions.count(prepack_name)) {
        ffi::json::Object pack = functions.at(prepack_name).cast<ffi::json::Object>()
                                     .at("pack").cast<ffi::json::Object>();
        ffi::Tensor packed_w = NewTensor(Ints(pack.at("shape")),
                                         DType(std::string(pack.at("dtype").cast<ffi::String>())));
        ffi::Function prepack = module->GetFunction(name + "_prepack").value();
        ffi::Function packed = module->GetFunction(name + "_packed").value();
        ffi::AnyView pack_args[2] = {tensors.at("w"), packed_w};
        prepack.CallPacked(pack_args, 2, &unused);
        ffi::Tensor result = NewTensor(out_shape, dtype);
        std::vector<ffi::AnyView> packed_args;
        for (const std::string& arg : names) {
          packed_args.push_back(arg == "w" ? ffi::AnyView(packed_w) : ffi::AnyView(tensors.at(arg)));
        }
        packed_args.back() = result;
        for (int call = 1; call <= 2; ++call) {
          packed.CallPacked(packed_args.data(), static_cast<int32_t>(packed_args.size()), &unused);
          double packed_error = Error(Values(result), expected);
          ok = packed_error <= tolerance;
          failures += !ok;
          std::printf("%-12s %-12s packed call %d (%s pack, once): error %.3g %s\n", name.c_str(),
                      op.c_str(), call, std::string(pack.at("kind").cast<ffi::String>()).c_str(),
                      packed_error, ok ? "PASS" : "FAIL");
        }
      }
    }
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    return 2;
  }
  std::printf("%s\n", failures ? "FAILED" : "ALL PASS");
  return failures ? 1 : 0;
}
