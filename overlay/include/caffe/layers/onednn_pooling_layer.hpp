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
  onednn::UnaryPrimitives primitives_;
};
#endif

}  // namespace caffe

#endif  // CAFFE_ONEDNN_POOLING_LAYER_HPP_
