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
  const bool training = training_;
  // oneDNN's jit kernels take channels in blocks where the plain layout has
  // only its reference loop.
  const std::string slower = primitives_.Choose(
      [&](dnnl::memory::format_tag layout, dnnl::primitive_desc* forward,
          dnnl::primitive_desc* backward) {
    const dnnl::memory::desc md(plain.get_dims(),
        dnnl::memory::data_type::f32, layout);
    dnnl::lrn_forward::primitive_desc forward_pd(onednn::cpu_engine(), prop,
        algorithm, md, md, this->size_, this->alpha_, this->beta_, k,
        onednn::Attr());
    *forward = forward_pd;
    if (!training) return;
    *backward = dnnl::lrn_backward::primitive_desc(onednn::cpu_engine(),
        algorithm, md, md, md, this->size_, this->alpha_, this->beta_, k,
        forward_pd, onednn::Attr());
  });
  // A layer that names no engine runs the faster code, and oneDNN's
  // reference loops are slower than Caffe's.
  if (this->layer_param_.lrn_param().engine() != LRNParameter_Engine_ONEDNN &&
      !slower.empty()) {
    UseCaffe(slower);
    return;
  }
  primitives_.Init(plain, plain);
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
    primitives_.Forward(bottom[0]->cpu_data(), top[0]->mutable_cpu_data());
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
    primitives_.Backward(bottom[0]->cpu_data(), top[0]->cpu_diff(),
                         bottom[0]->mutable_cpu_diff());
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

INSTANTIATE_CLASS(OneDNNLRNLayer);

}  // namespace caffe
#endif  // USE_ONEDNN
