#ifdef USE_ONEDNN
#include <cmath>
#include <iterator>
#include <string>
#include <vector>

#include "caffe/layers/onednn_conv_layer.hpp"

namespace caffe {

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::UseCaffe(const std::string& why,
                                               bool error) {
  use_caffe_ = true;
  fallback_.Set(why, error);
}

template <typename Dtype>
bool OneDNNConvolutionLayer<Dtype>::DefaultEngine() const {
  // or names CAFFE, which CAFFE_ENGINE=onednn runs here
  return this->layer_param_.convolution_param().engine() !=
      ConvolutionParameter_Engine_ONEDNN;
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  ConvolutionLayer<Dtype>::LayerSetUp(bottom, top);
  if (sizeof(Dtype) != sizeof(float)) {
    UseCaffe("oneDNN computes in float only");
  } else if (this->num_spatial_axes_ != 2) {
    UseCaffe("a convolution over " +
        std::to_string(this->num_spatial_axes_) +
        " spatial axes (oneDNN's engine runs 2-D ones)");
  } else if (this->channel_axis_ != 1) {
    UseCaffe("convolution_param.axis is not 1");
  }
  if (use_caffe_) fallback_.Always();
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  ConvolutionLayer<Dtype>::Reshape(bottom, top);
  // An empty batch runs Caffe's loops, which do nothing (oneDNN refuses it).
  if (fallback_.always() || bottom[0]->count() == 0 ||
      (bottom[0]->shape() == shape_ && training_ == this->backward_needed())) {
    return;
  }
  use_caffe_ = false;  // decided for this shape
  try {
    shape_ = bottom[0]->shape();
    // A net that never runs this layer's backward gets primitives and a
    // choice of code made for the forward alone.
    training_ = this->backward_needed();
    MakeForward();
  } catch (const dnnl::error& e) {
    UseCaffe(std::string("oneDNN has no convolution for it: ") + e.what(),
             true);
  }
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::MakeForward() {
  const int* kernel = this->kernel_shape_.cpu_data();
  const int* stride = this->stride_.cpu_data();
  const int* pad = this->pad_.cpu_data();
  const int* dilation = this->dilation_.cpu_data();
  const int group = this->group_, out = this->num_output_;
  const int channels = this->channels_;
  strides_ = {stride[0], stride[1]};
  dilates_ = {dilation[0] - 1, dilation[1] - 1};  // oneDNN counts from 0
  pad_l_ = {pad[0], pad[1]};
  pad_r_ = {pad[0], pad[1]};
  src_md_ = onednn::Plain({shape_[0], channels, shape_[2], shape_[3]});
  dst_md_ = onednn::Plain({shape_[0], out, this->output_shape_[0],
                           this->output_shape_[1]});
  // Caffe's weights (out, channels / group, kh, kw) are oneDNN's goihw.
  weights_md_ = group == 1
      ? onednn::Plain({out, channels, kernel[0], kernel[1]})
      : onednn::Plain({group, out / group, channels / group,
                       kernel[0], kernel[1]});
  bias_md_ = this->bias_term_ ? onednn::Plain({out}) : dnnl::memory::desc();
  // The activations' layout: where the primitive picks (format any), it
  // picks one of its own, and Operand copies the activations into it and
  // back. Those copies (transposes, bound by memory) cost as much as a 1x1
  // convolution, which over Caffe's layout is one GEMM an image (the weights
  // times the image's channels x pixels, no im2col): it runs on Caffe's
  // buffers. ResNet-50's 1x1 convolutions took 196 ms at batch 8 with the
  // copies, 111 ms without (each timed alone, one thread, AVX-512; the
  // whole net's time is in docs/speed.md). A depthwise
  // convolution runs oneDNN's depthwise kernel on channels in blocks of 16
  // (AVX-512) or 8, where oneDNN would pick channels last: MobileNet's
  // forward took 9-17% less time (AVX2 and AVX-512). Each only where its
  // primitives are no reference code (ARM), else format any.
  typedef dnnl::memory::format_tag tag;
  vector<tag> layouts;
  if (kernel[0] == 1 && kernel[1] == 1) {
    layouts.push_back(tag::abcd);
  } else if (group > 1 && group == channels && out == channels) {
    layouts.assign(std::begin(onednn::kBlockedLayouts),
                   std::end(onednn::kBlockedLayouts));
  }
  const dnnl::prop_kind prop = training_
      ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  bool chosen = false;
  for (int i = 0; i < layouts.size() && !chosen; ++i) {
    activations_ = layouts[i];
    try {
      forward_pd_ = ForwardPD(prop, bias_md_, onednn::Attr());
      // (a blocked layout only for the depthwise kernel, jit_dw)
      const std::string impl = forward_pd_.impl_info_str();
      chosen = (layouts[i] == tag::abcd || impl.compare(0, 6, "jit_dw") == 0)
          && !onednn::IsReference(forward_pd_) && (!training_ ||
          (!onednn::IsReference(DataPD()) &&
           !onednn::IsReference(WeightsPD())));
    } catch (const dnnl::error&) {
      // none for this layout
    }
  }
  if (!chosen) {
    activations_ = tag::any;
    forward_pd_ = ForwardPD(prop, bias_md_, onednn::Attr());
  }
  // A layer that names no engine runs the faster code, decided here for
  // forward and backward alike, so that every pass runs the same code.
  const std::string slower = !DefaultEngine() ? ""
      : training_ ? SlowerThanCaffe()
      : onednn::IsReference(forward_pd_)
      ? onednn::ReferenceReason(forward_pd_) : "";
  if (!slower.empty()) {
    UseCaffe(slower);
    return;
  }
  forward_ = dnnl::convolution_forward(forward_pd_);
  src_.Init(src_md_, forward_pd_.src_desc(), 0);
  weights_.Init(weights_md_, forward_pd_.weights_desc(),
      onednn::Operand::kOwn);
  if (this->bias_term_) {
    bias_.Init(bias_md_, forward_pd_.bias_desc(), onednn::Operand::kOwn);
  }
  dst_.Init(dst_md_, forward_pd_.dst_desc(), 1);
  backward_made_ = false;
  if (!training_ && !fused_.empty()) MakeFused();
}

template <typename Dtype>
int OneDNNConvolutionLayer<Dtype>::FuseFollowing(
    const vector<Layer<Dtype>*>& following) {
  const LayerParameter& param = this->layer_param_;
  if (fallback_.always() || param.bottom_size() != 1 ||
      param.top_size() != 1) {
    return 0;
  }
  const std::string& blob = param.top(0);
  batch_norm_ = scale_ = relu_ = NULL;
  fused_.clear();
  for (int i = 0; i < following.size(); ++i) {
    Layer<Dtype>* layer = following[i];
    const LayerParameter& next = layer->layer_param();
    // In place on this layer's top, the next in the net, no backward, no
    // loss: nothing reads the values between them.
    if (next.bottom_size() != 1 || next.top_size() != 1 ||
        next.bottom(0) != blob || next.top(0) != blob ||
        layer->backward_needed() || layer->loss(0) != 0) {
      break;
    }
    const std::string type = layer->type();
    if (type == "BatchNorm" && fused_.empty()) {
      const BatchNormParameter& bn = next.batch_norm_param();
      const bool global_stats = bn.has_use_global_stats()
          ? bn.use_global_stats() : next.phase() == TEST;
      if (!global_stats) break;  // it normalises by the batch's statistics
      batch_norm_ = layer;
    } else if (type == "Scale" && scale_ == NULL && relu_ == NULL) {
      const ScaleParameter& sp = next.scale_param();
      // One factor per channel (Caffe's ScaleLayer over axis 1 alone).
      if ((sp.axis() != 1 && sp.axis() != -3) || sp.num_axes() != 1) break;
      scale_ = layer;
    } else if (type == "ReLU" && relu_ == NULL &&
               next.relu_param().engine() == ReLUParameter_Engine_ONEDNN) {
      // oneDNN's ReLU, which gives 0 for NaN, only where the layer asks
      // for it; Caffe's forward (NaN stays NaN) runs on its own otherwise.
      relu_ = layer;
    } else {
      break;
    }
    fused_.push_back(layer);
  }
  fold_sources_.clear();
  for (int i = 0; i < this->blobs_.size(); ++i) {
    fold_sources_.push_back(this->blobs_[i].get());
  }
  for (int i = 0; i < 2; ++i) {
    Layer<Dtype>* layer = i == 0 ? batch_norm_ : scale_;
    if (layer == NULL) continue;
    for (int j = 0; j < layer->blobs().size(); ++j) {
      fold_sources_.push_back(layer->blobs()[j].get());
    }
  }
  fold_versions_.assign(fold_sources_.size(), 0);
  shape_.clear();  // primitives again, with the fused one
  return fused_.size();
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::MakeFused() {
  dnnl::primitive_attr attr = onednn::Attr();
  if (relu_ != NULL) {
    dnnl::post_ops relu;
    relu.append_eltwise(dnnl::algorithm::eltwise_relu,
        relu_->layer_param().relu_param().negative_slope(), 0.f);
    attr.set_post_ops(relu);
  }
  const dnnl::memory::desc bias_md = onednn::Plain({this->num_output_});
  const dnnl::convolution_forward::primitive_desc pd =
      ForwardPD(dnnl::prop_kind::forward_inference, bias_md, attr);
  fused_forward_ = dnnl::convolution_forward(pd);
  fused_src_.Init(src_md_, pd.src_desc(), 0);
  if (!(pd.weights_desc() == fused_weights_md_)) {
    fused_weights_md_ = pd.weights_desc();
    fold_versions_.assign(fold_sources_.size(), 0);  // a new own copy
  }
  // The folded weights are made in a scratch buffer and kept in the copy.
  fused_weights_.Init(weights_md_, pd.weights_desc(), onednn::Operand::kOwn,
      false, true);
  fused_bias_.Init(bias_md, pd.bias_desc(), onednn::Operand::kOwn, false,
      true);
  fused_dst_.Init(dst_md_, pd.dst_desc(), 1);
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::Fold() {
  bool changed = false;
  for (int i = 0; i < fold_sources_.size(); ++i) {
    fold_sources_[i]->cpu_data();
    const uint64_t version = fold_sources_[i]->data()->version();
    if (version != fold_versions_[i]) changed = true;
    fold_versions_[i] = version;
  }
  if (!changed) return;
  // Per output channel c, y = a[c] * conv(x) + d[c]: BatchNorm's
  // (x - mean) / sqrt(variance + eps), then Scale's x * gamma + beta.
  const int out = this->num_output_;
  std::vector<double> a(out, 1.0), d(out, 0.0);
  if (batch_norm_ != NULL) {
    const vector<shared_ptr<Blob<Dtype> > >& stats = batch_norm_->blobs();
    // Caffe keeps sums weighted by a factor in the third blob.
    const double factor = stats[2]->cpu_data()[0];
    const double f = factor == 0 ? 0 : 1 / factor;
    const double eps =
        batch_norm_->layer_param().batch_norm_param().eps();
    const Dtype* mean = stats[0]->cpu_data();
    const Dtype* variance = stats[1]->cpu_data();
    for (int c = 0; c < out; ++c) {
      a[c] = 1 / std::sqrt(variance[c] * f + eps);
      d[c] = -mean[c] * f * a[c];
    }
  }
  if (scale_ != NULL) {
    const Dtype* gamma = scale_->blobs()[0]->cpu_data();
    const Dtype* beta = scale_->blobs().size() > 1
        ? scale_->blobs()[1]->cpu_data() : NULL;
    for (int c = 0; c < out; ++c) {
      a[c] *= gamma[c];
      d[c] = d[c] * gamma[c] + (beta == NULL ? 0 : beta[c]);
    }
  }
  const int count = this->blobs_[0]->count(), per_out = count / out;
  const Dtype* weights = this->blobs_[0]->cpu_data();
  const Dtype* bias = this->bias_term_ ? this->blobs_[1]->cpu_data() : NULL;
  float* w = static_cast<float*>(onednn::Scratch(2, count * sizeof(float)));
  float* b = static_cast<float*>(onednn::Scratch(3, out * sizeof(float)));
  for (int c = 0; c < out; ++c) {
    for (int k = 0; k < per_out; ++k) {
      w[c * per_out + k] = weights[c * per_out + k] * a[c];
    }
    b[c] = (bias == NULL ? 0 : bias[c]) * a[c] + d[c];
  }
  folded_weights_ = fused_weights_.In(w);
  folded_bias_ = fused_bias_.In(b);
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::ForwardFusedLayers(
    const vector<Blob<Dtype>*>& top) {
  for (int i = 0; i < fused_.size(); ++i) fused_[i]->Forward(top, top);
}

template <typename Dtype>
dnnl::convolution_backward_data::primitive_desc
OneDNNConvolutionLayer<Dtype>::DataPD() const {
  return dnnl::convolution_backward_data::primitive_desc(
      onednn::cpu_engine(), dnnl::algorithm::convolution_direct,
      Activations(src_md_), onednn::Any(weights_md_), Activations(dst_md_),
      strides_, dilates_, pad_l_, pad_r_, forward_pd_, onednn::Attr());
}

template <typename Dtype>
dnnl::convolution_backward_weights::primitive_desc
OneDNNConvolutionLayer<Dtype>::WeightsPD() const {
  return dnnl::convolution_backward_weights::primitive_desc(
      onednn::cpu_engine(), dnnl::algorithm::convolution_direct,
      Activations(src_md_), onednn::Any(weights_md_), bias_md_,
      Activations(dst_md_), strides_, dilates_, pad_l_, pad_r_, forward_pd_,
      onednn::Attr());
}

template <typename Dtype>
dnnl::memory::desc OneDNNConvolutionLayer<Dtype>::Activations(
    const dnnl::memory::desc& md) const {
  return dnnl::memory::desc(md.get_dims(), md.get_data_type(), activations_);
}

template <typename Dtype>
dnnl::convolution_forward::primitive_desc
OneDNNConvolutionLayer<Dtype>::ForwardPD(dnnl::prop_kind prop,
    const dnnl::memory::desc& bias, const dnnl::primitive_attr& attr) const {
  return dnnl::convolution_forward::primitive_desc(onednn::cpu_engine(),
      prop, dnnl::algorithm::convolution_direct, Activations(src_md_),
      onednn::Any(weights_md_), bias, Activations(dst_md_), strides_,
      dilates_, pad_l_, pad_r_, attr);
}

template <typename Dtype>
std::string OneDNNConvolutionLayer<Dtype>::SlowerThanCaffe() const {
  // oneDNN's reference loops are slower than Caffe's code.
  if (onednn::IsReference(forward_pd_)) {
    return onednn::ReferenceReason(forward_pd_);
  }
  const dnnl::convolution_backward_data::primitive_desc data_pd = DataPD();
  if (onednn::IsReference(data_pd)) return onednn::ReferenceReason(data_pd);
  const dnnl::convolution_backward_weights::primitive_desc weights_pd =
      WeightsPD();
  if (onednn::IsReference(weights_pd)) {
    return onednn::ReferenceReason(weights_pd);
  }
  // Measured (bench/bench_cpu_engine.py, LeNet's conv1 on an AVX2 CPU): with
  // one input channel per group, the AVX2 kernel of backward_weights takes
  // 3.8x Caffe's im2col + GEMM (AVX-512's does not).
  const std::string impl = weights_pd.impl_info_str();
  if (this->channels_ == this->group_ &&
      impl.find("avx512") == std::string::npos) {
    return "one input channel per group: oneDNN's " + impl +
        " backward is slower than Caffe's on this CPU";
  }
  return "";
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::MakeBackward() {
  const dnnl::convolution_backward_data::primitive_desc data_pd = DataPD();
  backward_data_ = dnnl::convolution_backward_data(data_pd);
  bd_diff_dst_.Init(dst_md_, data_pd.diff_dst_desc(), 1);
  // The forward's copy of the weights serves where the layouts are the
  // same: one copy a layer, reordered once a version of the weights.
  bd_shares_weights_ = data_pd.weights_desc() == forward_pd_.weights_desc();
  if (!bd_shares_weights_) {
    bd_weights_.Init(weights_md_, data_pd.weights_desc(),
        onednn::Operand::kOwn);
  }
  bd_diff_src_.Init(src_md_, data_pd.diff_src_desc(), 0);
  const dnnl::convolution_backward_weights::primitive_desc weights_pd =
      WeightsPD();
  backward_weights_ = dnnl::convolution_backward_weights(weights_pd);
  bw_src_.Init(src_md_, weights_pd.src_desc(), 0);
  bw_diff_dst_.Init(dst_md_, weights_pd.diff_dst_desc(), 1);
  // Caffe adds parameter gradients to what the diffs hold.
  bw_diff_weights_.Init(weights_md_, weights_pd.diff_weights_desc(),
      onednn::kWeightsDiffSlot, true);
  if (this->bias_term_) {
    bw_diff_bias_.Init(bias_md_, weights_pd.diff_bias_desc(),
        onednn::kBiasDiffSlot, true);
  }
  backward_made_ = true;
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  if (use_caffe_) fallback_.Report(this->layer_param_.name());
  const bool fused = this->run_fused_ && !fused_.empty();
  if (use_caffe_ || bottom[0]->count() == 0) {
    ConvolutionLayer<Dtype>::Forward_cpu(bottom, top);
    if (fused) ForwardFusedLayers(top);
    return;
  }
  try {
    if (fused) {
      Fold();
      Dtype* top_data = top[0]->mutable_cpu_data();
      onednn::Execute(fused_forward_, {
          {DNNL_ARG_SRC, fused_src_.In(bottom[0]->cpu_data())},
          {DNNL_ARG_WEIGHTS, folded_weights_},
          {DNNL_ARG_BIAS, folded_bias_},
          {DNNL_ARG_DST, fused_dst_.Target(top_data)}});
      fused_dst_.Out(top_data);
      onednn::cpu_stream().wait();
      return;
    }
    std::unordered_map<int, dnnl::memory> args;
    args[DNNL_ARG_WEIGHTS] = weights_.In(this->blobs_[0].get());
    if (this->bias_term_) {
      args[DNNL_ARG_BIAS] = bias_.In(this->blobs_[1].get());
    }
    for (int i = 0; i < bottom.size(); ++i) {
      Dtype* top_data = top[i]->mutable_cpu_data();
      args[DNNL_ARG_SRC] = src_.In(bottom[i]->cpu_data());
      args[DNNL_ARG_DST] = dst_.Target(top_data);
      onednn::Execute(forward_, args);
      dst_.Out(top_data);
    }
    onednn::cpu_stream().wait();
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!use_caffe_ && training_ && bottom[0]->count() > 0 &&
      !backward_made_) {
    try {
      MakeBackward();
    } catch (const dnnl::error& e) {
      UseCaffe(std::string("oneDNN has no backward convolution for it: ") +
               e.what(), true);
      fallback_.Report(this->layer_param_.name());
    }
  }
  // A backward the net never runs (`caffe time` runs every layer's) is
  // Caffe's.
  if (use_caffe_ || !training_ || bottom[0]->count() == 0) {
    ConvolutionLayer<Dtype>::Backward_cpu(top, propagate_down, bottom);
    return;
  }
  try {
    const bool weights_diff = this->param_propagate_down_[0];
    const bool bias_diff = this->bias_term_ && this->param_propagate_down_[1];
    for (int i = 0; i < top.size(); ++i) {
      const Dtype* top_diff = top[i]->cpu_diff();
      if (weights_diff || bias_diff) {
        std::unordered_map<int, dnnl::memory> args;
        args[DNNL_ARG_SRC] = bw_src_.In(bottom[i]->cpu_data());
        args[DNNL_ARG_DIFF_DST] = bw_diff_dst_.In(top_diff);
        args[DNNL_ARG_DIFF_WEIGHTS] = bw_diff_weights_.Target(NULL);
        if (this->bias_term_) {
          args[DNNL_ARG_DIFF_BIAS] = bw_diff_bias_.Target(NULL);
        }
        onednn::Execute(backward_weights_, args);
        if (weights_diff) {
          bw_diff_weights_.Out(this->blobs_[0]->mutable_cpu_diff());
        }
        if (bias_diff) bw_diff_bias_.Out(this->blobs_[1]->mutable_cpu_diff());
      }
      if (propagate_down[i]) {
        Dtype* bottom_diff = bottom[i]->mutable_cpu_diff();
        std::unordered_map<int, dnnl::memory> args;
        args[DNNL_ARG_DIFF_DST] = bd_diff_dst_.In(top_diff);
        args[DNNL_ARG_WEIGHTS] = (bd_shares_weights_ ? weights_
            : bd_weights_).In(this->blobs_[0].get());
        args[DNNL_ARG_DIFF_SRC] = bd_diff_src_.Target(bottom_diff);
        onednn::Execute(backward_data_, args);
        bd_diff_src_.Out(bottom_diff);
      }
    }
    onednn::cpu_stream().wait();
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  ConvolutionLayer<Dtype>::Forward_gpu(bottom, top);
  if (this->run_fused_) ForwardFusedLayers(top);
}

INSTANTIATE_CLASS(OneDNNConvolutionLayer);

}  // namespace caffe
#endif  // USE_ONEDNN
