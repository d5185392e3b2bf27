#ifndef CAFFE_ONEDNN_INNER_PRODUCT_LAYER_HPP_
#define CAFFE_ONEDNN_INNER_PRODUCT_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/inner_product_layer.hpp"
#include "caffe/util/onednn.hpp"

namespace caffe {

#ifdef USE_ONEDNN
/**
 * @brief InnerProductLayer (any axis, transpose or not) on oneDNN's inner
 *        product primitives in CPU mode, in nets that run no backward
 *        unless it names engine ONEDNN; GPU mode runs Caffe's code.
 */
template <typename Dtype>
class OneDNNInnerProductLayer : public InnerProductLayer<Dtype> {
 public:
  explicit OneDNNInnerProductLayer(const LayerParameter& param)
      : InnerProductLayer<Dtype>(param), use_caffe_(false), rows_(-1),
        training_(true) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

 private:
  void UseCaffe(const std::string& why, bool error = false);
  bool DefaultEngine() const;  // the layer names no engine
  void MakeForward();
  void MakeBackward();
  dnnl::inner_product_backward_weights::primitive_desc WeightsPD() const;
  dnnl::inner_product_backward_data::primitive_desc DataPD() const;

  bool use_caffe_;  // for the current shape
  onednn::Fallback fallback_;
  int rows_;  // M_, the row count the primitives are made for
  bool training_;  // they are made for a backward too
  dnnl::memory::desc src_md_, weights_md_, bias_md_, dst_md_;
  dnnl::memory::desc weights_layout_;
  dnnl::inner_product_forward::primitive_desc forward_pd_;
  dnnl::inner_product_forward forward_;
  onednn::Operand src_, weights_, bias_, dst_;
  bool backward_made_;
  dnnl::inner_product_backward_data backward_data_;
  onednn::Operand bd_diff_dst_, bd_weights_, bd_diff_src_;
  bool bd_shares_weights_;  // the backward data reads weights_
  dnnl::inner_product_backward_weights backward_weights_;
  onednn::Operand bw_src_, bw_diff_dst_, bw_diff_weights_, bw_diff_bias_;
};
#endif

}  // namespace caffe

#endif  // CAFFE_ONEDNN_INNER_PRODUCT_LAYER_HPP_
