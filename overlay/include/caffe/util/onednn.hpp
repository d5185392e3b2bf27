#ifndef CAFFE_UTIL_ONEDNN_HPP_
#define CAFFE_UTIL_ONEDNN_HPP_

// Shared pieces of the oneDNN engine (the OneDNN*Layer classes): the CPU
// engine and stream, Caffe's buffers as oneDNN memory, and the reorders
// between Caffe's plain NCHW layout and the layouts oneDNN's primitives pick.

#ifdef USE_ONEDNN

#include <stdint.h>
#include <functional>
#include <set>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"

#include "caffe/blob.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {
namespace onednn {

// The one CPU engine, and a stream per thread (pycaffe nets may run in
// several Python threads).
dnnl::engine& cpu_engine();
dnnl::stream& cpu_stream();

// The one log line of a layer that runs on Caffe's code instead: INFO for a
// known case, WARNING for an error oneDNN gave while making a primitive.
void LogFallback(const std::string& layer, const std::string& why,
                 bool error = false);

// Why a layer runs Caffe's code instead of oneDNN's: for good (a setting
// oneDNN cannot run, found at setup), or for the shape at hand, decided
// again at each new shape, so that the code a layer runs for a shape never
// depends on the shapes it saw before. Each reason is logged once a layer,
// at the first forward that runs Caffe's code for it (a layer decides again
// when its net says that its backward never runs: a choice replaced before
// any forward is never said).
class Fallback {
 public:
  Fallback() : always_(false), error_(false) {}
  void Always() { always_ = true; }
  bool always() const { return always_; }
  void Set(const std::string& why, bool error) {
    why_ = why;
    error_ = error;
  }
  void Report(const std::string& layer) {
    if (!why_.empty() && logged_.insert(why_).second) {
      LogFallback(layer, why_, error_);
    }
  }

 private:
  bool always_, error_;
  std::string why_;
  std::set<std::string> logged_;
};

// Whether oneDNN picked one of its reference loops for a primitive (an
// implementation named ref... or simple...: pooling on a plain layout on an
// AVX2 CPU; or gemm:ref, a GEMM on its reference GEMM: convolutions and inner
// products on ARM), slower than Caffe's own code; and that as a fallback
// reason.
bool IsReference(const dnnl::primitive_desc_base& pd);
std::string ReferenceReason(const dnnl::primitive_desc_base& pd);
// The same for a forward and its backward (empty where the net runs none):
// "" where neither is reference code.
std::string ReferenceReason(const dnnl::primitive_desc_base& forward,
                            const dnnl::primitive_desc_base& backward);

// A oneDNN error while a layer runs, as Caffe's error (caffe.CaffeError in
// pycaffe, one line in the caffe tool) naming the layer and its type.
void Fail(const LayerParameter& layer, const dnnl::error& e);

// oneDNN's channel-blocked layouts of 4-D activations, widest first: 16
// channels a block (AVX-512's kernels), then 8 (AVX2's and SSE4.1's).
const dnnl::memory::format_tag kBlockedLayouts[] = {
    dnnl::memory::format_tag::aBcd16b, dnnl::memory::format_tag::aBcd8b};

// A layout of md's dimensions and type that a primitive chooses (format any).
dnnl::memory::desc Any(const dnnl::memory::desc& md);

// A plain (row-major) float layout of the given dimensions.
dnnl::memory::desc Plain(const dnnl::memory::dims& dims);

// A thread's reusable buffer, one per slot, at least bytes long: the copies
// of activations in a primitive's layout live only during one layer's call,
// so all layers share them instead of each keeping its own. Slots 0 and 1
// are the activations', kWeightsDiffSlot and kBiasDiffSlot a parameter
// gradient's on its way into Caffe's diff (where it is added), and
// kScratchpadSlot is Execute's.
void* Scratch(int slot, size_t bytes);
const int kWeightsDiffSlot = 2;
const int kBiasDiffSlot = 3;
const int kScratchpadSlot = 4;

// The attributes every primitive of the engine is made with: a scratchpad
// that Execute passes (user scratchpad mode). With oneDNN's own scratchpad
// a primitive may not move between threads, and pycaffe makes nets in one
// Python thread and runs them in others.
dnnl::primitive_attr Attr();

// Run a primitive on this thread's stream, with this thread's scratchpad.
void Execute(const dnnl::primitive& primitive,
             std::unordered_map<int, dnnl::memory> args);

// One operand of a primitive: a Caffe buffer in its plain layout, and the
// layout the primitive wants. Where they differ, the reorders between the
// two are made once, in Init, and the primitive gets a copy: in a scratch
// slot (activations), or in a buffer of the operand's own that is kept
// between calls (weights, and parameter gradients that accumulate).
class Operand {
 public:
  static const int kOwn = -1;
  Operand()
      : reorder_(false), accumulate_(false), copy_(false), slot_(0),
        version_(0) {}
  // slot: the scratch slot, distinct for the operands of one primitive, or
  // kOwn. accumulate: the result is added to the Caffe buffer (Caffe's
  // parameter gradients accumulate), so it always goes through a copy.
  // copy: a copy even where the layouts are the same (weights computed in a
  // scratch buffer, kept in the own copy). An own copy is allocated at its
  // first use. Init again with the same layouts (a new batch size) keeps an
  // own copy and its version: the weights are not reordered again for it.
  void Init(const dnnl::memory::desc& plain, const dnnl::memory::desc& wanted,
            int slot, bool accumulate = false, bool copy = false);
  // The memory a primitive reads: the Caffe buffer, or its reordered copy.
  dnnl::memory In(const void* data);
  // The same for a blob's data (a layer's weights, slot kOwn), reordered
  // only when its version (SyncedMemory::version) differs from the last one.
  template <typename Dtype>
  dnnl::memory In(Blob<Dtype>* blob) {
    const void* data = blob->cpu_data();
    const uint64_t version = blob->data()->version();
    if (reorder_ && slot_ == kOwn && version == version_) return own_;
    version_ = version;
    return In(data);
  }
  // The memory a primitive writes; Out then puts it in the Caffe buffer.
  dnnl::memory Target(void* data);
  void Out(void* data);

 private:
  dnnl::memory Copy();  // the memory of the copy in the wanted layout

  dnnl::memory::desc plain_, wanted_;
  bool reorder_, accumulate_, copy_;
  int slot_;
  dnnl::memory own_;  // the copy, where slot_ is kOwn
  uint64_t version_;  // of the blob data in own_ (0: none)
  dnnl::reorder to_copy_, from_copy_;
};

// The primitives of a layer of one bottom and one top (pooling, LRN): its
// forward, its backward where its net runs one, in the first layout with
// more than reference code for both, and Caffe's buffers reordered to and
// from it.
class UnaryPrimitives {
 public:
  UnaryPrimitives() : backward_reads_src_(false) {}
  // make(layout, &forward, &backward) makes the primitive descriptors for
  // operands in that layout (backward left empty where the net runs none),
  // or throws dnnl::error where oneDNN has none for it. Choose takes the
  // first of Caffe's plain layout and kBlockedLayouts with more than
  // reference code, and the plain one where none has; it throws the
  // plain one's error. It returns why Caffe's code is faster ("" where
  // nothing is reference code).
  typedef std::function<void(dnnl::memory::format_tag,
      dnnl::primitive_desc*, dnnl::primitive_desc*)> Make;
  std::string Choose(const Make& make);
  // Makes the chosen primitives, for Caffe's buffers in these (plain)
  // layouts.
  void Init(const dnnl::memory::desc& src, const dnnl::memory::desc& dst);
  void Forward(const void* src, void* dst);
  void Backward(const void* src, const void* diff_dst, void* diff_src);

 private:
  dnnl::primitive_desc forward_pd_, backward_pd_;
  dnnl::primitive forward_, backward_;
  Operand src_, dst_, bw_src_, diff_dst_, diff_src_;
  bool backward_reads_src_;  // LRN's does, pooling's does not
  dnnl::memory workspace_;   // what the forward leaves for the backward
};

}  // namespace onednn
}  // namespace caffe

#endif  // USE_ONEDNN
#endif  // CAFFE_UTIL_ONEDNN_HPP_
