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
      : ConvolutionLayer<Dtype>(param), use_caffe_(false), training_(true),
        activations_(dnnl::memory::format_tag::any), batch_norm_(NULL),
        scale_(NULL), relu_(NULL) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  // In a net that never runs its backward: the in-place BatchNorm (global
  // statistics), Scale (per channel) and ReLU (engine: ONEDNN) after it, in
  // that order, each optional, as one convolution (BatchNorm and Scale
  // folded into its weights and bias, ReLU a post-op).
  virtual int FuseFollowing(const vector<Layer<Dtype>*>& following);

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
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
  // md in the layout of the activations the primitives take.
  dnnl::memory::desc Activations(const dnnl::memory::desc& md) const;
  dnnl::convolution_forward::primitive_desc ForwardPD(dnnl::prop_kind prop,
      const dnnl::memory::desc& bias, const dnnl::primitive_attr& attr) const;
  // Why a layer that names no engine runs Caffe's code instead, or "".
  std::string SlowerThanCaffe() const;
  void MakeFused();
  void Fold();  // the fused weights and bias, after their sources changed
  // The layers this one fused, each run on its own after this one's forward.
  void ForwardFusedLayers(const vector<Blob<Dtype>*>& top);

  bool use_caffe_;  // for the current shape
  onednn::Fallback fallback_;
  vector<int> shape_;  // the bottom shape the primitives are made for
  bool training_;  // they are made for a backward too
  // The activations' layout of the primitives (any: they pick).
  dnnl::memory::format_tag activations_;
  // Fusion: the layers this one's forward computes where the net says so.
  Layer<Dtype>* batch_norm_;
  Layer<Dtype>* scale_;
  Layer<Dtype>* relu_;
  vector<Layer<Dtype>*> fused_;
  vector<Blob<Dtype>*> fold_sources_;  // the blobs the fused weights use
  vector<uint64_t> fold_versions_;  // their versions in the fused weights
  dnnl::convolution_forward fused_forward_;
  onednn::Operand fused_src_, fused_weights_, fused_bias_, fused_dst_;
  dnnl::memory::desc fused_weights_md_;
  dnnl::memory folded_weights_, folded_bias_;
  dnnl::memory::desc src_md_, weights_md_, bias_md_, dst_md_;
  dnnl::memory::dims strides_, dilates_, pad_l_, pad_r_;
  dnnl::convolution_forward::primitive_desc forward_pd_;
  dnnl::convolution_forward forward_;
  onednn::Operand src_, weights_, bias_, dst_;
  bool backward_made_;
  dnnl::convolution_backward_data backward_data_;
  onednn::Operand bd_diff_dst_, bd_weights_, bd_diff_src_;
  bool bd_shares_weights_;  // the backward data reads weights_
  dnnl::convolution_backward_weights backward_weights_;
  onednn::Operand bw_src_, bw_diff_dst_, bw_diff_weights_, bw_diff_bias_;
};
#endif

}  // namespace caffe

#endif  // CAFFE_ONEDNN_CONV_LAYER_HPP_
