#ifndef CAFFE_ONEDNN_RELU_LAYER_HPP_
#define CAFFE_ONEDNN_RELU_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/relu_layer.hpp"
#include "caffe/util/onednn.hpp"

namespace caffe {

#ifdef USE_ONEDNN
/**
 * @brief ReLULayer (negative_slope included) on oneDNN's eltwise primitives
 *        in CPU mode; GPU mode runs Caffe's code.
 */
template <typename Dtype>
class OneDNNReLULayer : public ReLULayer<Dtype> {
 public:
  explicit OneDNNReLULayer(const LayerParameter& param)
      : ReLULayer<Dtype>(param), use_caffe_(false), count_(-1) {}
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
  int count_;  // the element count the primitives are made for
  dnnl::memory::desc md_;
  dnnl::eltwise_forward forward_;
  dnnl::eltwise_backward backward_;
};
#endif

}  // namespace caffe

#endif  // CAFFE_ONEDNN_RELU_LAYER_HPP_
