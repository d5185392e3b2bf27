#ifdef USE_ONEDNN
#include <string>
#include <vector>

#include "caffe/layers/onednn_relu_layer.hpp"

namespace caffe {

template <typename Dtype>
void OneDNNReLULayer<Dtype>::UseCaffe(const std::string& why, bool error) {
  use_caffe_ = true;
  fallback_.Set(why, error);
}

template <typename Dtype>
void OneDNNReLULayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  ReLULayer<Dtype>::LayerSetUp(bottom, top);
  if (sizeof(Dtype) != sizeof(float)) {
    UseCaffe("oneDNN computes in float only");
    fallback_.Always();
  }
}

template <typename Dtype>
void OneDNNReLULayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  ReLULayer<Dtype>::Reshape(bottom, top);
  if (fallback_.always() || bottom[0]->count() == count_) return;
  count_ = bottom[0]->count();
  if (count_ == 0) return;  // Caffe's loops do nothing; oneDNN refuses it
  use_caffe_ = false;  // decided for this shape
  try {
    MakePrimitives();
  } catch (const dnnl::error& e) {
    UseCaffe(std::string("oneDNN has no ReLU for it: ") + e.what(), true);
  }
}

template <typename Dtype>
void OneDNNReLULayer<Dtype>::MakePrimitives() {
  // Element-wise: any shape is one long vector.
  md_ = onednn::Plain({count_});
  const float slope = this->layer_param_.relu_param().negative_slope();
  dnnl::eltwise_forward::primitive_desc forward_pd(onednn::cpu_engine(),
      dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu,
      md_, md_, slope, 0.f, onednn::Attr());
  dnnl::eltwise_backward::primitive_desc backward_pd(onednn::cpu_engine(),
      dnnl::algorithm::eltwise_relu, md_, md_, md_, slope, 0.f, forward_pd,
      onednn::Attr());
  // A layer that names no engine runs the faster code, and oneDNN's
  // reference loops are slower than Caffe's.
  const bool by_default = this->layer_param_.relu_param().engine() !=
      ReLUParameter_Engine_ONEDNN;
  const std::string slower = onednn::ReferenceReason(forward_pd, backward_pd);
  if (by_default && !slower.empty()) {
    UseCaffe(slower);
    return;
  }
  forward_ = dnnl::eltwise_forward(forward_pd);
  backward_ = dnnl::eltwise_backward(backward_pd);
}

template <typename Dtype>
void OneDNNReLULayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  if (use_caffe_) fallback_.Report(this->layer_param_.name());
  // A layer that names no engine computes its forward with Caffe's code:
  // oneDNN's ReLU gives 0 for NaN (and, without a slope, for -inf) where
  // Caffe's gives NaN, which would hide a diverging net. Its backward is
  // oneDNN's (about 10x Caffe's), which differs only where the input is NaN.
  const bool by_default = this->layer_param_.relu_param().engine() !=
      ReLUParameter_Engine_ONEDNN;
  if (use_caffe_ || count_ <= 0 || by_default) {
    ReLULayer<Dtype>::Forward_cpu(bottom, top);
    return;
  }
  try {
    const dnnl::engine& engine = onednn::cpu_engine();
    onednn::Execute(forward_, {
        {DNNL_ARG_SRC, dnnl::memory(md_, engine,
            const_cast<Dtype*>(bottom[0]->cpu_data()))},
        {DNNL_ARG_DST, dnnl::memory(md_, engine, top[0]->mutable_cpu_data())}});
    onednn::cpu_stream().wait();
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

template <typename Dtype>
void OneDNNReLULayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (use_caffe_ || count_ <= 0) {
    ReLULayer<Dtype>::Backward_cpu(top, propagate_down, bottom);
    return;
  }
  try {
    if (!propagate_down[0]) return;
    // In place (top is bottom), the "source" is the output: its sign is the
    // input's, as in Caffe's own code.
    const dnnl::engine& engine = onednn::cpu_engine();
    onednn::Execute(backward_, {
        {DNNL_ARG_SRC, dnnl::memory(md_, engine,
            const_cast<Dtype*>(bottom[0]->cpu_data()))},
        {DNNL_ARG_DIFF_DST, dnnl::memory(md_, engine,
            const_cast<Dtype*>(top[0]->cpu_diff()))},
        {DNNL_ARG_DIFF_SRC, dnnl::memory(md_, engine,
            bottom[0]->mutable_cpu_diff())}});
    onednn::cpu_stream().wait();
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

INSTANTIATE_CLASS(OneDNNReLULayer);

}  // namespace caffe
#endif  // USE_ONEDNN
