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
  const dnnl::memory::desc src_md = onednn::Plain({shape_[0],
      this->channels_, this->height_, this->width_});
  const dnnl::memory::desc dst_md = onednn::Plain({shape_[0],
      this->channels_, this->pooled_height_, this->pooled_width_});
  const dnnl::memory::dims strides = {this->stride_h_, this->stride_w_};
  const dnnl::memory::dims kernel = {this->kernel_h_, this->kernel_w_};
  const dnnl::memory::dims dilation = {0, 0};
  const dnnl::memory::dims pad_l = {this->pad_h_, this->pad_w_};
  const dnnl::memory::dims pad_r = {pad_r_h, pad_r_w};
  const dnnl::prop_kind prop = training_ ? dnnl::prop_kind::forward_training
      : dnnl::prop_kind::forward_inference;
  const bool training = training_;
  // Below AVX-512, oneDNN pools a plain layout with its reference loop only;
  // its jit kernels take channels in blocks.
  const std::string slower = primitives_.Choose(
      [&](dnnl::memory::format_tag layout, dnnl::primitive_desc* forward,
          dnnl::primitive_desc* backward) {
    const dnnl::memory::desc src(src_md.get_dims(),
        dnnl::memory::data_type::f32, layout);
    const dnnl::memory::desc dst(dst_md.get_dims(),
        dnnl::memory::data_type::f32, layout);
    dnnl::pooling_forward::primitive_desc forward_pd(onednn::cpu_engine(),
        prop, algorithm, src, dst, strides, kernel, dilation, pad_l, pad_r,
        onednn::Attr());
    *forward = forward_pd;
    if (!training) return;
    *backward = dnnl::pooling_backward::primitive_desc(onednn::cpu_engine(),
        algorithm, src, dst, strides, kernel, dilation, pad_l, pad_r,
        forward_pd, onednn::Attr());
  });
  // A layer that names no engine (or names CAFFE, which CAFFE_ENGINE=onednn
  // runs here) runs the faster code, and oneDNN's reference loops are slower
  // than Caffe's.
  if (this->layer_param_.pooling_param().engine() !=
      PoolingParameter_Engine_ONEDNN && !slower.empty()) {
    UseCaffe(slower);
    return;
  }
  primitives_.Init(src_md, dst_md);
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
    primitives_.Forward(bottom[0]->cpu_data(), top[0]->mutable_cpu_data());
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
  if (!propagate_down[0]) return;
  try {
    primitives_.Backward(bottom[0]->cpu_data(), top[0]->cpu_diff(),
                         bottom[0]->mutable_cpu_diff());
  } catch (const dnnl::error& e) {
    onednn::Fail(this->layer_param_, e);
  }
}

INSTANTIATE_CLASS(OneDNNPoolingLayer);

}  // namespace caffe
#endif  // USE_ONEDNN
