#ifndef CAFFE_ONEDNN_POOLING_LAYER_HPP_
#define CAFFE_ONEDNN_POOLING_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/pooling_layer.hpp"
#include "caffe/util/onednn.hpp"

namespace caffe {

#ifdef USE_ONEDNN
/**
 * @brief PoolingLayer (MAX and AVE, with Caffe's output sizes) on oneDNN's
 *        pooling primitives in CPU mode; GPU mode, STOCHASTIC pooling and a
 *        MAX pooling asked for its mask top run Caffe's code.
 */
template <typename Dtype>
class OneDNNPoolingLayer : public PoolingLayer<Dtype> {
 public:
  explicit OneDNNPoolingLayer(const LayerParameter& param)
      : PoolingLayer<Dtype>(param), use_caffe_(false), training_(true) {}
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
  void MakePrimitives();

  bool use_caffe_;  // for the current shape
  onednn::Fallback fallback_;
  vector<int> shape_;  // the bottom shape the primitives are made for
  bool training_;  // they are made for a backward too
  dnnl::pooling_forward forward_;
  dnnl::pooling_backward backward_;
  dnnl::memory::desc src_md_, dst_md_;  // Caffe's (plain) layouts
  // Caffe's blobs as the primitives take them (reordered where blocked).
  onednn::Operand src_, dst_, diff_dst_, diff_src_;
  dnnl::memory workspace_;  // where MAX pooling's maxima were
};
#endif

}  // namespace caffe

#endif  // CAFFE_ONEDNN_POOLING_LAYER_HPP_
