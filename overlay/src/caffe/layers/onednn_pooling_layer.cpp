#ifdef USE_ONEDNN
#include <string>
#include <vector>

#include "caffe/layers/onednn_pooling_layer.hpp"

namespace caffe {

template <typename Dtype>
void OneDNNPoolingLayer<Dtype>::UseCaffe(const std::string& why, bool error) {
  use_caffe_ = true;
  fallback_.Set(why, error);
}

template <typename Dtype>
void OneDNNPoolingLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  PoolingLayer<Dtype>::LayerSetUp(bottom, top);
  const PoolingParameter& param = this->layer_param_.pooling_param();
  if (sizeof(Dtype) != sizeof(float)) {
    UseCaffe("oneDNN computes in float only");
  } else if (param.pool() == PoolingParameter_PoolMethod_STOCHASTIC) {
    UseCaffe("oneDNN has no STOCHASTIC pooling");
  } else if (top.size() > 1) {
    UseCaffe("its second top asks for the MAX pooling mask");
  }
  if (use_caffe_) fallback_.Always();
}

template <typename Dtype>
void OneDNNPoolingLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  PoolingLayer<Dtype>::Reshape(bottom, top);
  // An empty batch runs Caffe's loops, which do nothing (oneDNN refuses it).
  if (fallback_.always() || bottom[0]->count() == 0 ||
      (bottom[0]->shape() == shape_ && training_ == this->backward_needed())) {
    return;
  }
  use_caffe_ = false;  // decided for this shape
  try {
    shape_ = bottom[0]->shape();
    // A net that never runs this layer's backward (a deploy net, a TEST
    // net) gets a forward without MAX pooling's workspace.
    training_ = this->backward_needed();
    MakePrimitives();
  } catch (const dnnl::error& e) {
    UseCaffe(std::string("oneDNN has no pooling for it: ") + e.what(), true);
  }
}

template <typename Dtype>
void OneDNNPoolingLayer<Dtype>::MakePrimitives() {
  // Caffe's output size (ceil or floor rounding, the last window starting
  // inside the image) in oneDNN's terms: the right padding that gives it.
  const int pad_r_h = (this->pooled_height_ - 1) * this->stride_h_ +
      this->kernel_h_ - this->height_ - this->pad_h_;
  const int pad_r_w = (this->pooled_width_ - 1) * this->stride_w_ +
      this->kernel_w_ - this->width_ - this->pad_w_;
  dnnl::algorithm algorithm = dnnl::algorithm::pooling_max;
  if (this->layer_param_.pooling_param().pool() ==
      PoolingParameter_PoolMethod_AVE) {
    // Caffe divides by the window clipped to the padded image: without
    // padding, the cells inside the image; with padding, the whole window
    // unless it reaches past the padding (neither of oneDNN's averages).
    if (this->pad_h_ == 0 && this->pad_w_ == 0) {
      algorithm = dnnl::algorithm::pooling_avg_exclude_padding;
    } else if (pad_r_h <= this->pad_h_ && pad_r_w <= this->pad_w_) {
      algorithm = dnnl::algorithm::pooling_avg_include_padding;
    } else {
      UseCaffe("AVE pooling whose last window reaches past the padding "
               "(Caffe's average counts the padding up to pad only)");
      return;
    }
  }
  src_md_ = onednn::Plain({shape_[0], this->channels_, this->height_,
                           this->width_});
  dst_md_ = onednn::Plain({shape_[0], this->channels_, this->pooled_height_,
                           this->pooled_width_});
  const dnnl::memory::dims strides = {this->stride_h_, this->stride_w_};
  const dnnl::memory::dims kernel = {this->kernel_h_, this->kernel_w_};
  const dnnl::memory::dims dilation = {0, 0};
  const dnnl::memory::dims pad_l = {this->pad_h_, this->pad_w_};
  const dnnl::memory::dims pad_r = {pad_r_h, pad_r_w};
  const dnnl::prop_kind prop = training_ ? dnnl::prop_kind::forward_training
      : dnnl::prop_kind::forward_inference;
  dnnl::pooling_forward::primitive_desc forward_pd(onednn::cpu_engine(),
      prop, algorithm, src_md_, dst_md_,
      strides, kernel, dilation, pad_l, pad_r, onednn::Attr());
  // (or names CAFFE, which CAFFE_ENGINE=onednn runs here)
  const bool by_default = this->layer_param_.pooling_param().engine() !=
      PoolingParameter_Engine_ONEDNN;
  dnnl::memory::desc src_md = src_md_;
  if (onednn::IsReference(forward_pd)) {
    // Below AVX-512, oneDNN pools a plain layout with its reference loop
    // only; its jit kernels take channels in blocks of 8: pool there,
    // reordering what the layer reads and writes.
    const dnnl::memory::desc blocked(src_md_.get_dims(),
        dnnl::memory::data_type::f32, dnnl::memory::format_tag::aBcd8b);
    const dnnl::memory::desc dst_any(dst_md_.get_dims(),
        dnnl::memory::data_type::f32, dnnl::memory::format_tag::any);
    try {
      forward_pd = dnnl::pooling_forward::primitive_desc(
          onednn::cpu_engine(), prop, algorithm, blocked, dst_any, strides,
          kernel, dilation, pad_l, pad_r, onednn::Attr());
      src_md = blocked;
    } catch (const dnnl::error&) {
      // none for the blocked layout either: the plain one stays
    }
  }
  // A layer that names no engine runs the faster code, and oneDNN's
  // reference loops are slower than Caffe's.
  if (by_default && onednn::IsReference(forward_pd)) {
    UseCaffe(onednn::ReferenceReason(forward_pd));
    return;
  }
  workspace_ = dnnl::memory();
  if (training_) {
    dnnl::pooling_backward::primitive_desc backward_pd(onednn::cpu_engine(),
        algorithm, src_md, forward_pd.dst_desc(), strides, kernel, dilation,
        pad_l, pad_r, forward_pd, onednn::Attr());
    if (by_default && onednn::IsReference(backward_pd)) {
      UseCaffe(onednn::ReferenceReason(backward_pd));
      return;
    }
    diff_dst_.Init(dst_md_, backward_pd.diff_dst_desc(), 0);
    diff_src_.Init(src_md_, backward_pd.diff_src_desc(), 1);
    if (forward_pd.workspace_desc().get_size() > 0) {
      workspace_ = dnnl::memory(forward_pd.workspace_desc(),
                                onednn::cpu_engine());
    }
    backward_ = dnnl::pooling_backward(backward_pd);
  }
  forward_ = dnnl::pooling_forward(forward_pd);
  src_.Init(src_md_, forward_pd.src_desc(), 0);
  dst_.Init(dst_md_, forward_pd.dst_desc(), 1);
}

template <typename Dtype>
void OneDNNPoolingLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  if (use_caffe_) fallback_.Report(this->layer_param_.name());
  if (use_caffe_ || bottom[0]->count() == 0) {
    PoolingLayer<Dtype>::Forward_cpu(bottom, top);
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
void OneDNNPoolingLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!use_caffe_ && !training_ && bottom[0]->count() > 0) {
    // A backward the net never runs (`caffe time` runs every layer's):
    // Caffe's, after Caffe's forward has found the maxima it needs.
    PoolingLayer<Dtype>::Forward_cpu(bottom, top);
  }
  if (use_caffe_ || !training_ || bottom[0]->count() == 0) {
    PoolingLayer<Dtype>::Backward_cpu(top, propagate_down, bottom);
    return;
  }
  try {
    if (!propagate_down[0]) return;
    Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
    std::unordered_map<int, dnnl::memory> args;
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

INSTANTIATE_CLASS(OneDNNPoolingLayer);

}  // namespace caffe
#endif  // USE_ONEDNN
