#ifdef USE_ONEDNN
#include <dlfcn.h>

#include <cstdlib>
#include <iterator>
#include <string>
#include <vector>

#include "caffe/common.hpp"
#include "caffe/util/onednn.hpp"

namespace caffe {
namespace onednn {

// oneDNN runs on OpenMP: OMP_NUM_THREADS threads, or all cores. Where only
// the BLAS library's variable is set (OPENBLAS_NUM_THREADS, MKL_NUM_THREADS),
// as users of Caffe's CPU mode set it, oneDNN follows it too. OpenMP keeps
// the count per thread: each thread that uses oneDNN sets it once.
static void FollowThreadSettings() {
  const char* omp = getenv("OMP_NUM_THREADS");
  if (omp != NULL && *omp != '\0') return;
  const char* blas = getenv("OPENBLAS_NUM_THREADS");
  if (blas == NULL || *blas == '\0') blas = getenv("MKL_NUM_THREADS");
  const int threads = blas == NULL ? 0 : atoi(blas);
  if (threads <= 0) return;
  // From the OpenMP runtime that oneDNN loaded (GNU's or LLVM's).
  typedef void (*SetNumThreads)(int);
  SetNumThreads set_num_threads = reinterpret_cast<SetNumThreads>(
      dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  if (set_num_threads != NULL) set_num_threads(threads);
}

// Once in each thread, before it makes or runs a primitive (oneDNN sizes a
// primitive's work for the thread count it sees when the primitive is made).
static void SetUpThread() {
  thread_local bool done = (FollowThreadSettings(), true);
  (void) done;
}

dnnl::engine& cpu_engine() {
  SetUpThread();
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& cpu_stream() {
  SetUpThread();
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

void LogFallback(const std::string& layer, const std::string& why,
                 bool error) {
  LOG_IF(INFO, !error) << "Layer " << layer
      << ": runs on Caffe's engine, not oneDNN's: " << why;
  LOG_IF(WARNING, error) << "Layer " << layer
      << ": runs on Caffe's engine, not oneDNN's: " << why;
}

bool IsReference(const dnnl::primitive_desc_base& pd) {
  const std::string impl = pd.impl_info_str();
  return impl.compare(0, 3, "ref") == 0 || impl.compare(0, 6, "simple") == 0 ||
      impl.compare(0, 8, "gemm:ref") == 0;
}

std::string ReferenceReason(const dnnl::primitive_desc_base& pd) {
  return "oneDNN has only its reference implementation (" +
      std::string(pd.impl_info_str()) + ") for it on this CPU";
}

std::string ReferenceReason(const dnnl::primitive_desc_base& forward,
                            const dnnl::primitive_desc_base& backward) {
  if (IsReference(forward)) return ReferenceReason(forward);
  if (backward && IsReference(backward)) return ReferenceReason(backward);
  return "";
}

void Fail(const LayerParameter& layer, const dnnl::error& e) {
  LOG(FATAL) << "Layer '" << layer.name() << "' (" << layer.type()
             << ", oneDNN engine): " << e.what();
}

dnnl::memory::desc Any(const dnnl::memory::desc& md) {
  return dnnl::memory::desc(md.get_dims(), md.get_data_type(),
                            dnnl::memory::format_tag::any);
}

dnnl::memory::desc Plain(const dnnl::memory::dims& dims) {
  typedef dnnl::memory::format_tag tag;
  static const tag row_major[] = {tag::a, tag::ab, tag::abc, tag::abcd,
                                  tag::abcde};
  CHECK(dims.size() >= 1 && dims.size() <= 5) << dims.size() << "-D memory";
  return dnnl::memory::desc(dims, dnnl::memory::data_type::f32,
                            row_major[dims.size() - 1]);
}

void* Scratch(int slot, size_t bytes) {
  struct Buffer {
    void* data;
    size_t size;
    Buffer() : data(NULL), size(0) {}
    ~Buffer() { free(data); }
  };
  thread_local Buffer buffers[kScratchpadSlot + 1];
  CHECK(slot >= 0 && slot <= kScratchpadSlot) << "scratch slot " << slot;
  Buffer& buffer = buffers[slot];
  if (buffer.size < bytes) {
    free(buffer.data);
    buffer.data = NULL;
    buffer.size = 0;
    // 64 bytes: the alignment oneDNN's kernels prefer.
    CHECK_EQ(posix_memalign(&buffer.data, 64, bytes), 0)
        << "cannot allocate " << bytes << " bytes for oneDNN";
    buffer.size = bytes;
  }
  return buffer.data;
}

dnnl::primitive_attr Attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

void Execute(const dnnl::primitive& primitive,
             std::unordered_map<int, dnnl::memory> args) {
  const_dnnl_memory_desc_t scratchpad = dnnl_primitive_desc_query_md(
      primitive.get_primitive_desc(), dnnl_query_scratchpad_md, 0);
  const size_t bytes =
      scratchpad == NULL ? 0 : dnnl_memory_desc_get_size(scratchpad);
  if (bytes > 0) {
    dnnl_memory_desc_t md;  // a copy, which the C++ desc then owns
    CHECK_EQ(dnnl_memory_desc_clone(&md, scratchpad), dnnl_success);
    args[DNNL_ARG_SCRATCHPAD] = dnnl::memory(dnnl::memory::desc(md),
        cpu_engine(), Scratch(kScratchpadSlot, bytes));
  }
  primitive.execute(cpu_stream(), args);
}

void Operand::Init(const dnnl::memory::desc& plain,
                   const dnnl::memory::desc& wanted, int slot,
                   bool accumulate, bool copy) {
  if (slot == kOwn && slot_ == kOwn && reorder_ && accumulate == accumulate_ &&
      copy == copy_ && plain == plain_ && wanted == wanted_) {
    return;
  }
  plain_ = plain;
  wanted_ = wanted;
  slot_ = slot;
  accumulate_ = accumulate;
  copy_ = copy;
  version_ = 0;
  own_ = dnnl::memory();
  reorder_ = !(plain == wanted) || accumulate || copy;
  if (!reorder_) return;
  const dnnl::engine& engine = cpu_engine();
  to_copy_ = dnnl::reorder(
      dnnl::reorder::primitive_desc(engine, plain, engine, wanted, Attr()));
  dnnl::primitive_attr attr = Attr();
  if (accumulate) {
    dnnl::post_ops sum;
    sum.append_sum(1.f);
    attr.set_post_ops(sum);
  }
  from_copy_ = dnnl::reorder(
      dnnl::reorder::primitive_desc(engine, wanted, engine, plain, attr));
}

dnnl::memory Operand::Copy() {
  if (slot_ == kOwn) {
    if (!own_) own_ = dnnl::memory(wanted_, cpu_engine());
    return own_;
  }
  return dnnl::memory(wanted_, cpu_engine(),
                      Scratch(slot_, wanted_.get_size()));
}

dnnl::memory Operand::In(const void* data) {
  dnnl::memory user(plain_, cpu_engine(), const_cast<void*>(data));
  if (!reorder_) return user;
  dnnl::memory copy = Copy();
  Execute(to_copy_, {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, copy}});
  return copy;
}

dnnl::memory Operand::Target(void* data) {
  if (!reorder_) return dnnl::memory(plain_, cpu_engine(), data);
  return Copy();
}

void Operand::Out(void* data) {
  if (!reorder_) return;
  dnnl::memory user(plain_, cpu_engine(), data);
  dnnl::memory copy = Copy();
  Execute(from_copy_, {{DNNL_ARG_FROM, copy}, {DNNL_ARG_TO, user}});
}

std::string UnaryPrimitives::Choose(const Make& make) {
  std::vector<dnnl::memory::format_tag> layouts(1,
      dnnl::memory::format_tag::abcd);
  layouts.insert(layouts.end(), std::begin(kBlockedLayouts),
                 std::end(kBlockedLayouts));
  for (int i = 0; i < layouts.size(); ++i) {
    dnnl::primitive_desc forward, backward;
    try {
      make(layouts[i], &forward, &backward);
    } catch (const dnnl::error&) {
      if (i == 0) throw;  // none for the plain layout: none at all
      continue;           // none for this blocked layout
    }
    if (i == 0 || ReferenceReason(forward, backward).empty()) {
      forward_pd_ = forward;
      backward_pd_ = backward;
    }
    if (ReferenceReason(forward, backward).empty()) break;
  }
  return ReferenceReason(forward_pd_, backward_pd_);
}

void UnaryPrimitives::Init(const dnnl::memory::desc& src,
                           const dnnl::memory::desc& dst) {
  forward_ = dnnl::primitive(forward_pd_);
  src_.Init(src, forward_pd_.src_desc(0), 0);
  dst_.Init(dst, forward_pd_.dst_desc(0), 1);
  workspace_ = dnnl::memory();
  backward_ = dnnl::primitive();
  if (!backward_pd_) return;
  backward_ = dnnl::primitive(backward_pd_);
  // Distinct scratch slots for one primitive's operands, the first ones
  // first: a slot keeps the largest copy it has held.
  const dnnl::memory::desc bw_src = backward_pd_.src_desc(0);
  backward_reads_src_ = bw_src.get_ndims() > 0;
  const int first = backward_reads_src_ ? 1 : 0;
  if (backward_reads_src_) bw_src_.Init(src, bw_src, 0);
  diff_dst_.Init(dst, backward_pd_.diff_dst_desc(0), first);
  diff_src_.Init(src, backward_pd_.diff_src_desc(0), first + 1);
  const dnnl::memory::desc workspace = forward_pd_.workspace_desc();
  if (workspace.get_size() > 0) {
    workspace_ = dnnl::memory(workspace, cpu_engine());
  }
}

void UnaryPrimitives::Forward(const void* src, void* dst) {
  std::unordered_map<int, dnnl::memory> args;
  args[DNNL_ARG_SRC] = src_.In(src);
  args[DNNL_ARG_DST] = dst_.Target(dst);
  if (workspace_) args[DNNL_ARG_WORKSPACE] = workspace_;
  Execute(forward_, args);
  dst_.Out(dst);
  cpu_stream().wait();
}

void UnaryPrimitives::Backward(const void* src, const void* diff_dst,
                               void* diff_src) {
  CHECK(backward_) << "no backward primitive was made";
  std::unordered_map<int, dnnl::memory> args;
  if (backward_reads_src_) args[DNNL_ARG_SRC] = bw_src_.In(src);
  args[DNNL_ARG_DIFF_DST] = diff_dst_.In(diff_dst);
  args[DNNL_ARG_DIFF_SRC] = diff_src_.Target(diff_src);
  if (workspace_) args[DNNL_ARG_WORKSPACE] = workspace_;
  Execute(backward_, args);
  diff_src_.Out(diff_src);
  cpu_stream().wait();
}

}  // namespace onednn
}  // namespace caffe
#endif  // USE_ONEDNN
