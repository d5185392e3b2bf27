#ifdef USE_ONEDNN
#include <vector>

#include "caffe/layers/onednn_inner_product_layer.hpp"

namespace caffe {

template <typename Dtype>
void OneDNNInnerProductLayer<Dtype>::UseCaffe(const std::string& why,
                                                bool error) {
  use_caffe_ = true;
  fallback_.Set(why, error);
}

template <typename Dtype>
bool OneDNNInnerProductLayer<Dtype>::DefaultEngine() const {
  // or names CAFFE, which CAFFE_ENGINE=onednn runs here
  return this->layer_param_.inner_product_param().engine() !=
      InnerProductParameter_Engine_ONEDNN;
}

template <typename Dtype>
void OneDNNInnerProductLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  InnerProductLayer<Dtype>::LayerSetUp(bottom, top);
  if (sizeof(Dtype) != sizeof(float)) UseCaffe("oneDNN computes in float only");
  if (use_caffe_) fallback_.Always();
}

template <typename Dtype>
void OneDNNInnerProductLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  InnerProductLayer<Dtype>::Reshape(bottom, top);
  if (fallback_.always() ||
      (this->M_ == rows_ && training_ == this->backward_needed())) {
    return;
  }
  rows_ = this->M_;
  // A net that never runs this layer's backward gets primitives and a
  // choice of code made for the forward alone.
  training_ = this->backward_needed();
  if (rows_ <= 0) return;
  use_caffe_ = false;  // decided for this shape
  try {
    MakeForward();
  } catch (const dnnl::error& e) {
    UseCaffe(std::string("oneDNN has no inner product for it: ") + e.what(),
             true);
  }
}

template <typename Dtype>
void OneDNNInnerProductLayer<Dtype>::MakeForward() {
  typedef dnnl::memory::format_tag tag;
  const int M = this->M_, K = this->K_, N = this->N_;
  // The axes before axis are rows, the rest one row of K inputs.
  src_md_ = onednn::Plain({M, K});
  dst_md_ = onednn::Plain({M, N});
  // oneDNN's weights are (N, K); Caffe keeps (K, N) where transpose is set.
  weights_md_ = this->transpose_
      ? dnnl::memory::desc({N, K}, dnnl::memory::data_type::f32, tag::ba)
      : onednn::Plain({N, K});
  bias_md_ = this->bias_term_ ? onednn::Plain({N}) : dnnl::memory::desc();
  dnnl::memory::desc weights_any({N, K}, dnnl::memory::data_type::f32,
      tag::any);
  forward_pd_ = dnnl::inner_product_forward::primitive_desc(
      onednn::cpu_engine(), training_ ? dnnl::prop_kind::forward_training
      : dnnl::prop_kind::forward_inference, src_md_, weights_any, bias_md_,
      dst_md_, onednn::Attr());
  // A layer that names no engine runs the faster code, and oneDNN's
  // reference loops are slower than Caffe's.
  if (DefaultEngine() && onednn::IsReference(forward_pd_)) {
    UseCaffe(onednn::ReferenceReason(forward_pd_));
    return;
  }
  // oneDNN's GEMM fallback for the weights' gradient (below AVX-512) writes
  // it transposed and reorders it into Caffe's diff: Caffe's own two GEMMs
  // are faster (LeNet's ip1 backward, bench/bench_cpu_engine.py, AVX2).
  // Decided here, for forward and backward alike, so that every pass of a
  // net runs the same code.
  const std::string impl = training_ ? WeightsPD().impl_info_str() : "";
  if (DefaultEngine() && impl.find("gemm") != std::string::npos &&
      impl.find("brgemm") == std::string::npos) {
    UseCaffe("oneDNN's backward is its GEMM fallback (" + impl +
             ") and a reorder of the gradient, slower than Caffe's GEMM");
    return;
  }
  forward_ = dnnl::inner_product_forward(forward_pd_);
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
dnnl::inner_product_backward_weights::primitive_desc
OneDNNInnerProductLayer<Dtype>::WeightsPD() const {
  return dnnl::inner_product_backward_weights::primitive_desc(
      onednn::cpu_engine(), src_md_, onednn::Any(weights_md_), bias_md_,
      dst_md_, forward_pd_, onednn::Attr());
}

template <typename Dtype>
void OneDNNInnerProductLayer<Dtype>::MakeBackward() {
  dnnl::memory::desc weights_any(weights_md_.get_dims(),
      dnnl::memory::data_type::f32, dnnl::memory::format_tag::any);
  dnnl::inner_product_backward_data::primitive_desc data_pd(
      onednn::cpu_engine(), src_md_, weights_any, dst_md_, forward_pd_,
      onednn::Attr());
  backward_data_ = dnnl::inner_product_backward_data(data_pd);
  bd_diff_dst_.Init(dst_md_, data_pd.diff_dst_desc(), 1);
  bd_weights_.Init(weights_md_, data_pd.weights_desc(),
      onednn::Operand::kOwn);
  bd_diff_src_.Init(src_md_, data_pd.diff_src_desc(), 0);
  const dnnl::inner_product_backward_weights::primitive_desc weights_pd =
      WeightsPD();
  backward_weights_ = dnnl::inner_product_backward_weights(weights_pd);
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
void OneDNNInnerProductLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  if (use_caffe_) fallback_.Report(this->layer_param_.name());
  if (use_caffe_ || rows_ <= 0) {
    InnerProductLayer<Dtype>::Forward_cpu(bottom, top);
    return;
  }
  try {
    Dtype* top_data = top[0]->mutable_cpu_data();
    std::unordered_map<int, dnnl::memory> args;
    args[DNNL_ARG_SRC] = src_.In(bottom[0]->cpu_data());
    args[DNNL_ARG_WEIGHTS] = weights_.In(this->blobs_[0].get());
    if (this->bias_term_) {
      args[DNNL_ARG_BIAS] = bias_.In(this->blobs_[1].get());
    }
    args[DNNL_ARG_DST] = dst_.Target(top_data);
    onednn::Execute(forward_, args);
    dst_.Out(top_data);
    onednn::cpu_stream().wait();
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

template <typename Dtype>
void OneDNNInnerProductLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!use_caffe_ && training_ && rows_ > 0 && !backward_made_) {
    try {
      MakeBackward();
    } catch (const dnnl::error& e) {
      onednn::Fail(this->layer_param_, e);
    }
  }
  // A backward the net never runs (`caffe time` runs every layer's) is
  // Caffe's.
  if (use_caffe_ || !training_ || rows_ <= 0) {
    InnerProductLayer<Dtype>::Backward_cpu(top, propagate_down, bottom);
    return;
  }
  try {
    const Dtype* top_diff = top[0]->cpu_diff();
    const bool weights_diff = this->param_propagate_down_[0];
    const bool bias_diff = this->bias_term_ && this->param_propagate_down_[1];
    if (weights_diff || bias_diff) {
      std::unordered_map<int, dnnl::memory> args;
      args[DNNL_ARG_SRC] = bw_src_.In(bottom[0]->cpu_data());
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
    if (propagate_down[0]) {
      Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
      std::unordered_map<int, dnnl::memory> args;
      args[DNNL_ARG_DIFF_DST] = bd_diff_dst_.In(top_diff);
      args[DNNL_ARG_WEIGHTS] = bd_weights_.In(this->blobs_[0].get());
      args[DNNL_ARG_DIFF_SRC] = bd_diff_src_.Target(bottom_diff);
      onednn::Execute(backward_data_, args);
      bd_diff_src_.Out(bottom_diff);
    }
    onednn::cpu_stream().wait();
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

INSTANTIATE_CLASS(OneDNNInnerProductLayer);

}  // namespace caffe
#endif  // USE_ONEDNN
