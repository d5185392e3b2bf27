#ifndef CAFFE_ONEDNN_CONV_LAYER_HPP_
#define CAFFE_ONEDNN_CONV_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/conv_layer.hpp"
#include "caffe/util/onednn.hpp"

namespace caffe {

#ifdef USE_ONEDNN
/**
 * @brief ConvolutionLayer on oneDNN's convolution primitives in CPU mode
 *        (2-D, float); GPU mode and everything else run Caffe's code.
 */
template <typename Dtype>
class OneDNNConvolutionLayer : public ConvolutionLayer<Dtype> {
 public:
  explicit OneDNNConvolutionLayer(const LayerParameter& param)
      : ConvolutionLayer<Dtype>(param), use_caffe_(false) {}
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
  dnnl::convolution_backward_data::primitive_desc DataPD() const;
  dnnl::convolution_backward_weights::primitive_desc WeightsPD() const;
  // Why a layer that names no engine runs Caffe's code instead, or "".
  std::string SlowerThanCaffe() const;

  bool use_caffe_;  // for the current shape
  onednn::Fallback fallback_;
  vector<int> shape_;  // the bottom shape the primitives are made for
  dnnl::memory::desc src_md_, weights_md_, bias_md_, dst_md_;
  dnnl::memory::dims strides_, dilates_, pad_l_, pad_r_;
  dnnl::convolution_forward::primitive_desc forward_pd_;
  dnnl::convolution_forward forward_;
  onednn::Operand src_, weights_, bias_, dst_;
  bool backward_made_;
  dnnl::convolution_backward_data backward_data_;
  onednn::Operand bd_diff_dst_, bd_weights_, bd_diff_src_;
  dnnl::convolution_backward_weights backward_weights_;
  onednn::Operand bw_src_, bw_diff_dst_, bw_diff_weights_, bw_diff_bias_;
};
#endif

}  // namespace caffe

#endif  // CAFFE_ONEDNN_CONV_LAYER_HPP_
