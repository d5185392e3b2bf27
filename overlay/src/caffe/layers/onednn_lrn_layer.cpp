#ifdef USE_ONEDNN
#include <string>
#include <vector>

#include "caffe/layers/onednn_lrn_layer.hpp"

namespace caffe {

template <typename Dtype>
void OneDNNLRNLayer<Dtype>::UseCaffe(const std::string& why, bool error) {
  use_caffe_ = true;
  fallback_.Set(why, error);
}

template <typename Dtype>
void OneDNNLRNLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LRNLayer<Dtype>::LayerSetUp(bottom, top);
  if (sizeof(Dtype) != sizeof(float)) {
    UseCaffe("oneDNN computes in float only");
    fallback_.Always();
  }
}

template <typename Dtype>
void OneDNNLRNLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LRNLayer<Dtype>::Reshape(bottom, top);
  // An empty batch runs Caffe's loops, which do nothing (oneDNN refuses it).
  if (fallback_.always() || bottom[0]->count() == 0 ||
      (bottom[0]->shape() == shape_ && training_ == this->backward_needed())) {
    return;
  }
  use_caffe_ = false;  // decided for this shape
  try {
    shape_ = bottom[0]->shape();
    training_ = this->backward_needed();
    MakePrimitives();
  } catch (const dnnl::error& e) {
    UseCaffe(std::string("oneDNN has no LRN for it: ") + e.what(), true);
  }
}

template <typename Dtype>
void OneDNNLRNLayer<Dtype>::MakePrimitives() {
  typedef dnnl::memory::format_tag tag;
  // Caffe's ACROSS_CHANNELS: x * (k + alpha / size * sum of squares)^-beta
  // over size channels; WITHIN_CHANNEL: the same over a size x size window
  // with k = 1 (Caffe's average of squares over a window that never leaves
  // the padding). oneDNN divides alpha by the window's size in both.
  const bool across = this->layer_param_.lrn_param().norm_region() ==
      LRNParameter_NormRegion_ACROSS_CHANNELS;
  const dnnl::algorithm algorithm = across
      ? dnnl::algorithm::lrn_across_channels
      : dnnl::algorithm::lrn_within_channel;
  const float k = across ? this->k_ : 1.f;
  const dnnl::memory::desc plain = onednn::Plain(
      {this->num_, this->channels_, this->height_, this->width_});
  const dnnl::prop_kind prop = training_ ? dnnl::prop_kind::forward_training
      : dnnl::prop_kind::forward_inference;
  // oneDNN's jit kernels take channels in blocks (16 with AVX-512, 8 with
  // AVX2) where the plain layout has only its reference loop: the first
  // layout that has one, reordering what the layer reads and writes.
  dnnl::lrn_forward::primitive_desc forward_pd;
  dnnl::lrn_backward::primitive_desc backward_pd;
  const tag layouts[] = {tag::abcd, tag::aBcd16b, tag::aBcd8b};
  for (int i = 0; i < 3; ++i) {
    const dnnl::memory::desc md(plain.get_dims(),
        dnnl::memory::data_type::f32, layouts[i]);
    try {
      dnnl::lrn_forward::primitive_desc f(onednn::cpu_engine(), prop,
          algorithm, md, md, this->size_, this->alpha_, this->beta_, k,
          onednn::Attr());
      dnnl::lrn_backward::primitive_desc b;
      if (training_) {
        b = dnnl::lrn_backward::primitive_desc(onednn::cpu_engine(),
            algorithm, md, md, md, this->size_, this->alpha_, this->beta_, k,
            f, onednn::Attr());
      }
      forward_pd = f;
      backward_pd = b;
    } catch (const dnnl::error&) {
      if (i == 0) throw;  // no LRN for it at all
      continue;           // none for this blocked layout
    }
    if (!onednn::IsReference(forward_pd) &&
        !(training_ && onednn::IsReference(backward_pd))) {
      break;
    }
  }
  // A layer that names no engine runs the faster code, and oneDNN's
  // reference loops are slower than Caffe's.
  const bool by_default = this->layer_param_.lrn_param().engine() !=
      LRNParameter_Engine_ONEDNN;
  if (by_default && (onednn::IsReference(forward_pd) ||
                     (training_ && onednn::IsReference(backward_pd)))) {
    UseCaffe(onednn::ReferenceReason(onednn::IsReference(forward_pd)
        ? static_cast<const dnnl::primitive_desc_base&>(forward_pd)
        : backward_pd));
    return;
  }
  forward_ = dnnl::lrn_forward(forward_pd);
  src_.Init(plain, forward_pd.src_desc(), 0);
  dst_.Init(plain, forward_pd.dst_desc(), 1);
  workspace_ = dnnl::memory();
  if (training_) {
    backward_ = dnnl::lrn_backward(backward_pd);
    bw_src_.Init(plain, backward_pd.src_desc(), 0);
    diff_dst_.Init(plain, backward_pd.diff_dst_desc(), 1);
    diff_src_.Init(plain, backward_pd.diff_src_desc(), 2);
    if (forward_pd.workspace_desc().get_size() > 0) {
      workspace_ = dnnl::memory(forward_pd.workspace_desc(),
                                onednn::cpu_engine());
    }
  }
}

template <typename Dtype>
void OneDNNLRNLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  if (use_caffe_) fallback_.Report(this->layer_param_.name());
  if (use_caffe_ || bottom[0]->count() == 0) {
    LRNLayer<Dtype>::Forward_cpu(bottom, top);
    return;
  }
  try {
    Dtype* top_data = top[0]->mutable_cpu_data();
    std::unordered_map<int, dnnl::memory> args;
    args[DNNL_ARG_SRC] = src_.In(bottom[0]->cpu_data());
    args[DNNL_ARG_DST] = dst_.Target(top_data);
    if (workspace_) args[DNNL_ARG_WORKSPACE] = workspace_;
    onednn::Execute(forward_, args);
    dst_.Out(top_data);
    onednn::cpu_stream().wait();
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

template <typename Dtype>
void OneDNNLRNLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!use_caffe_ && !training_ && bottom[0]->count() > 0) {
    // A backward the net never runs (`caffe time` runs every layer's):
    // Caffe's, after Caffe's forward has made the scale it needs.
    LRNLayer<Dtype>::Forward_cpu(bottom, top);
  }
  if (use_caffe_ || !training_ || bottom[0]->count() == 0) {
    LRNLayer<Dtype>::Backward_cpu(top, propagate_down, bottom);
    return;
  }
  if (!propagate_down[0]) return;
  try {
    Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
    std::unordered_map<int, dnnl::memory> args;
    args[DNNL_ARG_SRC] = bw_src_.In(bottom[0]->cpu_data());
    args[DNNL_ARG_DIFF_DST] = diff_dst_.In(top[0]->cpu_diff());
    args[DNNL_ARG_DIFF_SRC] = diff_src_.Target(bottom_diff);
    if (workspace_) args[DNNL_ARG_WORKSPACE] = workspace_;
    onednn::Execute(backward_, args);
    diff_src_.Out(bottom_diff);
    onednn::cpu_stream().wait();
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

INSTANTIATE_CLASS(OneDNNLRNLayer);

}  // namespace caffe
#endif  // USE_ONEDNN
