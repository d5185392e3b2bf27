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
  // In a net that runs its backward, Caffe's two GEMMs are faster than
  // oneDNN's backward (and the copy its weights' gradient takes into Caffe's
  // diff) by more than oneDNN's forward gains: forward + backward 1.3-3.3x
  // Caffe's on an Intel Xeon with AVX-512 (bench/bench_cpu_engine.py's
  // LeNet and conv4), slower backward on an AMD Zen 5, and below AVX-512
  // the backward is oneDNN's GEMM fallback. Decided here, for forward and
  // backward alike, so that every pass of a net runs the same code.
  if (DefaultEngine() && training_) {
    UseCaffe("a net that runs its backward: Caffe's GEMMs are faster there");
    return;
  }
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
  const dnnl::prop_kind prop = training_
      ? dnnl::prop_kind::forward_training
      : dnnl::prop_kind::forward_inference;
  // One row (a batch of one) is a matrix-vector product, bound by reading
  // the weights once: oneDNN's GEMM reads them in Caffe's layout, faster
  // than its blocked kernels and without their copy (CaffeNet's fc6-fc8:
  // 222 MB). Measured on an Intel Xeon, fc6 at one row: 11.5 ms against
  // 14.0 blocked with AVX-512, 10.5 against 13.7 with AVX2. Where rows reuse
  // each weight the blocked copy can pay (8 rows, AVX-512: 17.5 against 33).
  // Caffe's layout where that is no reference code (on ARM it is gemm:ref).
  weights_layout_ = onednn::Any(weights_md_);
  if (M == 1) {
    try {
      weights_layout_ = weights_md_;
      forward_pd_ = dnnl::inner_product_forward::primitive_desc(
          onednn::cpu_engine(), prop, src_md_, weights_layout_, bias_md_,
          dst_md_, onednn::Attr());
      if (onednn::IsReference(forward_pd_) || (training_ &&
          (onednn::IsReference(DataPD()) ||
           onednn::IsReference(WeightsPD())))) {
        weights_layout_ = onednn::Any(weights_md_);
      }
    } catch (const dnnl::error&) {
      weights_layout_ = onednn::Any(weights_md_);
    }
  }
  if (weights_layout_.get_format_kind() == dnnl::memory::format_kind::any) {
    forward_pd_ = dnnl::inner_product_forward::primitive_desc(
        onednn::cpu_engine(), prop, src_md_, weights_layout_, bias_md_,
        dst_md_, onednn::Attr());
  }
  // A layer that names no engine runs the faster code, and oneDNN's
  // reference loops are slower than Caffe's.
  if (DefaultEngine() && onednn::IsReference(forward_pd_)) {
    UseCaffe(onednn::ReferenceReason(forward_pd_));
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
      onednn::cpu_engine(), src_md_, weights_layout_, bias_md_,
      dst_md_, forward_pd_, onednn::Attr());
}

template <typename Dtype>
dnnl::inner_product_backward_data::primitive_desc
OneDNNInnerProductLayer<Dtype>::DataPD() const {
  return dnnl::inner_product_backward_data::primitive_desc(
      onednn::cpu_engine(), src_md_, weights_layout_, dst_md_, forward_pd_,
      onednn::Attr());
}

template <typename Dtype>
void OneDNNInnerProductLayer<Dtype>::MakeBackward() {
  const dnnl::inner_product_backward_data::primitive_desc data_pd = DataPD();
  backward_data_ = dnnl::inner_product_backward_data(data_pd);
  bd_diff_dst_.Init(dst_md_, data_pd.diff_dst_desc(), 1);
  // The forward's copy of the weights serves where the layouts are the
  // same: one copy a layer, reordered once a version of the weights.
  bd_shares_weights_ = data_pd.weights_desc() == forward_pd_.weights_desc();
  if (!bd_shares_weights_) {
    bd_weights_.Init(weights_md_, data_pd.weights_desc(),
        onednn::Operand::kOwn);
  }
  bd_diff_src_.Init(src_md_, data_pd.diff_src_desc(), 0);
  const dnnl::inner_product_backward_weights::primitive_desc weights_pd =
      WeightsPD();
  backward_weights_ = dnnl::inner_product_backward_weights(weights_pd);
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
      args[DNNL_ARG_WEIGHTS] = (bd_shares_weights_ ? weights_
            : bd_weights_).In(this->blobs_[0].get());
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
