#ifdef USE_ONEDNN
#include <string>
#include <vector>

#include "caffe/layers/onednn_conv_layer.hpp"

namespace caffe {

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::UseCaffe(const std::string& why, bool error) {
  use_caffe_ = true;
  fallback_.Log(this->layer_param_.name(), why, error);
}

template <typename Dtype>
bool OneDNNConvolutionLayer<Dtype>::DefaultEngine() const {
  return this->layer_param_.convolution_param().engine() ==
      ConvolutionParameter_Engine_DEFAULT;
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
      bottom[0]->shape() == shape_) {
    return;
  }
  use_caffe_ = false;  // decided for this shape
  try {
    shape_ = bottom[0]->shape();
    MakeForward();
  } catch (const dnnl::error& e) {
    UseCaffe(std::string("oneDNN has no convolution for it: ") + e.what(),
             true);
  }
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::MakeForward() {
  typedef dnnl::memory::format_tag tag;
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
  // The primitive picks its own layouts (format any); Operand reorders.
  dnnl::memory::desc src_any(src_md_.get_dims(), src_md_.get_data_type(),
      tag::any);
  dnnl::memory::desc weights_any(weights_md_.get_dims(),
      weights_md_.get_data_type(), tag::any);
  dnnl::memory::desc dst_any(dst_md_.get_dims(), dst_md_.get_data_type(),
      tag::any);
  forward_pd_ = dnnl::convolution_forward::primitive_desc(
      onednn::cpu_engine(), dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, src_any, weights_any, bias_md_,
      dst_any, strides_, dilates_, pad_l_, pad_r_, onednn::Attr());
  // A layer that names no engine runs the faster code, decided here for
  // forward and backward alike, so that every pass runs the same code.
  const std::string slower = DefaultEngine() ? SlowerThanCaffe() : "";
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
}

template <typename Dtype>
dnnl::convolution_backward_data::primitive_desc
OneDNNConvolutionLayer<Dtype>::DataPD() const {
  return dnnl::convolution_backward_data::primitive_desc(
      onednn::cpu_engine(), dnnl::algorithm::convolution_direct,
      onednn::Any(src_md_), onednn::Any(weights_md_), onednn::Any(dst_md_),
      strides_, dilates_, pad_l_, pad_r_, forward_pd_, onednn::Attr());
}

template <typename Dtype>
dnnl::convolution_backward_weights::primitive_desc
OneDNNConvolutionLayer<Dtype>::WeightsPD() const {
  return dnnl::convolution_backward_weights::primitive_desc(
      onednn::cpu_engine(), dnnl::algorithm::convolution_direct,
      onednn::Any(src_md_), onednn::Any(weights_md_), bias_md_,
      onednn::Any(dst_md_), strides_, dilates_, pad_l_, pad_r_, forward_pd_,
      onednn::Attr());
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
  bd_weights_.Init(weights_md_, data_pd.weights_desc(),
      onednn::Operand::kOwn);
  bd_diff_src_.Init(src_md_, data_pd.diff_src_desc(), 0);
  const dnnl::convolution_backward_weights::primitive_desc weights_pd =
      WeightsPD();
  backward_weights_ = dnnl::convolution_backward_weights(weights_pd);
  bw_src_.Init(src_md_, weights_pd.src_desc(), 0);
  bw_diff_dst_.Init(dst_md_, weights_pd.diff_dst_desc(), 1);
  // Caffe adds parameter gradients to what the diffs hold.
  bw_diff_weights_.Init(weights_md_, weights_pd.diff_weights_desc(),
      onednn::Operand::kOwn, true);
  if (this->bias_term_) {
    bw_diff_bias_.Init(bias_md_, weights_pd.diff_bias_desc(),
        onednn::Operand::kOwn, true);
  }
  backward_made_ = true;
}

template <typename Dtype>
void OneDNNConvolutionLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  if (use_caffe_ || bottom[0]->count() == 0) {
    ConvolutionLayer<Dtype>::Forward_cpu(bottom, top);
    return;
  }
  try {
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
  if (!use_caffe_ && bottom[0]->count() > 0 && !backward_made_) {
    try {
      MakeBackward();
    } catch (const dnnl::error& e) {
      UseCaffe(std::string("oneDNN has no backward convolution for it: ") +
               e.what(), true);
    }
  }
  if (use_caffe_ || bottom[0]->count() == 0) {
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
        args[DNNL_ARG_WEIGHTS] = bd_weights_.In(this->blobs_[0].get());
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

INSTANTIATE_CLASS(OneDNNConvolutionLayer);

}  // namespace caffe
#endif  // USE_ONEDNN
