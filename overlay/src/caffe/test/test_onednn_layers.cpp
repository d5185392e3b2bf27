#ifdef USE_ONEDNN
// The oneDNN engine against Caffe's own: forward equal over a parameter
// grid, backward equal (bottom and parameter gradients, which accumulate),
// GradientChecker on backward, each fallback, and the engine choice.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layer_factory.hpp"
#include "caffe/layers/onednn_conv_layer.hpp"
#include "caffe/layers/onednn_inner_product_layer.hpp"
#include "caffe/layers/onednn_lrn_layer.hpp"
#include "caffe/layers/onednn_pooling_layer.hpp"
#include "caffe/layers/onednn_relu_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

class OneDNNLayerTest : public ::testing::Test {
 protected:
  OneDNNLayerTest() { Caffe::set_mode(Caffe::CPU); }

  static void Fill(Blob<float>* blob, float std = 1.f) {
    FillerParameter param;
    param.set_std(std);
    GaussianFiller<float> filler(param);
    filler.Fill(blob);
  }

  // Random values into the diff of one blob, the same into another's.
  static void FillDiffs(Blob<float>* blob, Blob<float>* same, float std) {
    Blob<float> values(blob->shape());
    Fill(&values, std);
    caffe_copy(blob->count(), values.cpu_data(), blob->mutable_cpu_diff());
    caffe_copy(same->count(), values.cpu_data(), same->mutable_cpu_diff());
  }

  static void ExpectNear(const float* a, const float* b, int count,
                         const std::string& what) {
    for (int i = 0; i < count; ++i) {
      const float scale = std::max(1.f, std::max(std::fabs(a[i]),
                                                 std::fabs(b[i])));
      ASSERT_NEAR(a[i], b[i], 1e-4 * scale) << what << " at " << i;
    }
  }

  // Runs a oneDNN layer and Caffe's on the same bottom, parameters and top
  // diff, forward and twice backward (the parameter gradients accumulate);
  // all results must agree.
  static void ExpectSameAsCaffe(Layer<float>* onednn, Layer<float>* caffe,
                                const vector<int>& shape, bool in_place) {
    Blob<float> bottom(shape), bottom_caffe, top, top_caffe;
    Fill(&bottom);
    bottom_caffe.CopyFrom(bottom, false, true);
    vector<Blob<float>*> bottom_vec(1, &bottom), top_vec(1, &top);
    vector<Blob<float>*> bottom_caffe_vec(1, &bottom_caffe);
    vector<Blob<float>*> top_caffe_vec(1, &top_caffe);
    if (in_place) {
      top_vec[0] = &bottom;
      top_caffe_vec[0] = &bottom_caffe;
    }
    onednn->SetUp(bottom_vec, top_vec);
    caffe->SetUp(bottom_caffe_vec, top_caffe_vec);
    ASSERT_EQ(onednn->blobs().size(), caffe->blobs().size());
    for (int i = 0; i < onednn->blobs().size(); ++i) {
      Fill(onednn->blobs()[i].get());
      caffe->blobs()[i]->CopyFrom(*onednn->blobs()[i], false, true);
      // diffs to accumulate into
      FillDiffs(onednn->blobs()[i].get(), caffe->blobs()[i].get(), 0.1f);
    }
    onednn->Forward(bottom_vec, top_vec);
    caffe->Forward(bottom_caffe_vec, top_caffe_vec);
    ASSERT_EQ(top_vec[0]->shape(), top_caffe_vec[0]->shape());
    ExpectNear(top_vec[0]->cpu_data(), top_caffe_vec[0]->cpu_data(),
               top_vec[0]->count(), "forward");
    FillDiffs(top_vec[0], top_caffe_vec[0], 1.f);
    vector<bool> propagate_down(1, true);
    for (int pass = 0; pass < 2; ++pass) {
      onednn->Backward(top_vec, propagate_down, bottom_vec);
      caffe->Backward(top_caffe_vec, propagate_down, bottom_caffe_vec);
      ExpectNear(bottom.cpu_diff(), bottom_caffe.cpu_diff(), bottom.count(),
                 "bottom diff");
      for (int i = 0; i < onednn->blobs().size(); ++i) {
        ExpectNear(onednn->blobs()[i]->cpu_diff(),
                   caffe->blobs()[i]->cpu_diff(), onednn->blobs()[i]->count(),
                   "parameter diff " + std::to_string(i));
      }
    }
  }
};

// --- Convolution --------------------------------------------------------

TEST_F(OneDNNLayerTest, TestConvolutionGrid) {
  const int kernels[] = {1, 3, 5}, strides[] = {1, 2}, pads[] = {0, 2};
  const int dilations[] = {1, 2}, groups[] = {1, 2};
  for (int k : kernels) for (int s : strides) for (int p : pads)
  for (int d : dilations) for (int g : groups) for (int bias = 0; bias < 2;
                                                    ++bias) {
    LayerParameter param;
    param.set_name("conv");
    ConvolutionParameter* conv = param.mutable_convolution_param();
    conv->add_kernel_size(k);
    conv->add_stride(s);
    conv->add_pad(p);
    conv->add_dilation(d);
    conv->set_group(g);
    conv->set_num_output(6);
    conv->set_bias_term(bias);
    SCOPED_TRACE("kernel " + std::to_string(k) + " stride " +
        std::to_string(s) + " pad " + std::to_string(p) + " dilation " +
        std::to_string(d) + " group " + std::to_string(g) + " bias " +
        std::to_string(bias));
    OneDNNConvolutionLayer<float> onednn(param);
    ConvolutionLayer<float> caffe(param);
    ExpectSameAsCaffe(&onednn, &caffe, {2, 4, 11, 10}, false);
  }
}

TEST_F(OneDNNLayerTest, TestConvolutionRectangularKernel) {
  LayerParameter param;
  ConvolutionParameter* conv = param.mutable_convolution_param();
  conv->set_kernel_h(3);
  conv->set_kernel_w(1);
  conv->set_stride_h(2);
  conv->set_stride_w(1);
  conv->set_pad_h(1);
  conv->set_pad_w(0);
  conv->set_num_output(5);
  OneDNNConvolutionLayer<float> onednn(param);
  ConvolutionLayer<float> caffe(param);
  ExpectSameAsCaffe(&onednn, &caffe, {3, 3, 7, 9}, false);
}

TEST_F(OneDNNLayerTest, TestConvolutionGradient) {
  LayerParameter param;
  ConvolutionParameter* conv = param.mutable_convolution_param();
  conv->add_kernel_size(3);
  conv->add_stride(2);
  conv->add_pad(1);
  conv->set_group(2);
  conv->set_num_output(4);
  conv->mutable_weight_filler()->set_type("gaussian");
  conv->mutable_bias_filler()->set_type("gaussian");
  OneDNNConvolutionLayer<float> layer(param);
  Blob<float> bottom(2, 4, 6, 5), top;
  Fill(&bottom);
  vector<Blob<float>*> bottom_vec(1, &bottom), top_vec(1, &top);
  GradientChecker<float> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, bottom_vec, top_vec);
}

TEST_F(OneDNNLayerTest, TestConvolution3DFallsBack) {
  LayerParameter param;
  param.set_name("conv3d");
  ConvolutionParameter* conv = param.mutable_convolution_param();
  conv->add_kernel_size(3);
  conv->add_pad(1);
  conv->set_num_output(3);
  OneDNNConvolutionLayer<float> onednn(param);
  ConvolutionLayer<float> caffe(param);
  ExpectSameAsCaffe(&onednn, &caffe, {2, 2, 4, 5, 6}, false);
}

// The weights are reordered once and again only after they change: a write
// through mutable_cpu_data (a solver step, pycaffe's .data) must be seen.
TEST_F(OneDNNLayerTest, TestChangedWeightsAreSeen) {
  for (int ip = 0; ip < 2; ++ip) {
    LayerParameter param;
    param.mutable_convolution_param()->add_kernel_size(3);
    param.mutable_convolution_param()->set_num_output(16);
    param.mutable_inner_product_param()->set_num_output(16);
    shared_ptr<Layer<float> > onednn, caffe;
    if (ip) {
      onednn.reset(new OneDNNInnerProductLayer<float>(param));
      caffe.reset(new InnerProductLayer<float>(param));
    } else {
      onednn.reset(new OneDNNConvolutionLayer<float>(param));
      caffe.reset(new ConvolutionLayer<float>(param));
    }
    Blob<float> bottom(2, 16, 6, 6), top, top_caffe;
    Fill(&bottom);
    vector<Blob<float>*> bottom_vec(1, &bottom), top_vec(1, &top);
    vector<Blob<float>*> caffe_vec(1, &top_caffe);
    onednn->SetUp(bottom_vec, top_vec);
    caffe->SetUp(bottom_vec, caffe_vec);
    Fill(onednn->blobs()[0].get());
    for (int pass = 0; pass < 3; ++pass) {
      caffe->blobs()[0]->CopyFrom(*onednn->blobs()[0]);
      onednn->Forward(bottom_vec, top_vec);
      caffe->Forward(bottom_vec, caffe_vec);
      ExpectNear(top.cpu_data(), top_caffe.cpu_data(), top.count(),
                 "pass " + std::to_string(pass));
      if (pass == 0) {
        caffe_scal(onednn->blobs()[0]->count(), -2.f,
                   onednn->blobs()[0]->mutable_cpu_data());
      }
    }
  }
}

// --- Pooling ------------------------------------------------------------

TEST_F(OneDNNLayerTest, TestPoolingGrid) {
  const PoolingParameter_PoolMethod methods[] = {
      PoolingParameter_PoolMethod_MAX, PoolingParameter_PoolMethod_AVE};
  const PoolingParameter_RoundMode rounds[] = {
      PoolingParameter_RoundMode_CEIL, PoolingParameter_RoundMode_FLOOR};
  const int kernels[] = {2, 3}, strides[] = {1, 2}, pads[] = {0, 1};
  const int sizes[] = {8, 9};
  for (PoolingParameter_PoolMethod method : methods)
  for (PoolingParameter_RoundMode round : rounds)
  for (int k : kernels) for (int s : strides) for (int p : pads)
  for (int size : sizes) {
    if (p >= k) continue;  // Caffe's pooling requires pad < kernel
    LayerParameter param;
    param.set_name("pool");
    PoolingParameter* pool = param.mutable_pooling_param();
    pool->set_pool(method);
    pool->set_round_mode(round);
    pool->set_kernel_size(k);
    pool->set_stride(s);
    pool->set_pad(p);
    SCOPED_TRACE(std::string(method == PoolingParameter_PoolMethod_MAX ?
        "MAX" : "AVE") + (round == PoolingParameter_RoundMode_CEIL ?
        " ceil" : " floor") + " kernel " + std::to_string(k) + " stride " +
        std::to_string(s) + " pad " + std::to_string(p) + " size " +
        std::to_string(size));
    OneDNNPoolingLayer<float> onednn(param);
    PoolingLayer<float> caffe(param);
    ExpectSameAsCaffe(&onednn, &caffe, {2, 3, size, size + 1}, false);
  }
}

TEST_F(OneDNNLayerTest, TestGlobalPooling) {
  for (int ave = 0; ave < 2; ++ave) {
    LayerParameter param;
    param.mutable_pooling_param()->set_global_pooling(true);
    param.mutable_pooling_param()->set_pool(ave ?
        PoolingParameter_PoolMethod_AVE : PoolingParameter_PoolMethod_MAX);
    OneDNNPoolingLayer<float> onednn(param);
    PoolingLayer<float> caffe(param);
    ExpectSameAsCaffe(&onednn, &caffe, {2, 5, 7, 6}, false);
  }
}

TEST_F(OneDNNLayerTest, TestMaxPoolingGradient) {
  LayerParameter param;
  PoolingParameter* pool = param.mutable_pooling_param();
  pool->set_kernel_size(3);
  pool->set_stride(2);
  pool->set_pad(1);
  OneDNNPoolingLayer<float> layer(param);
  Blob<float> bottom(2, 2, 7, 6), top;
  Fill(&bottom);
  vector<Blob<float>*> bottom_vec(1, &bottom), top_vec(1, &top);
  GradientChecker<float> checker(1e-4, 1e-2);
  checker.CheckGradientExhaustive(&layer, bottom_vec, top_vec);
}

TEST_F(OneDNNLayerTest, TestPoolingMaskTopFallsBack) {
  LayerParameter param;
  param.set_name("pool_mask");
  param.mutable_pooling_param()->set_kernel_size(2);
  param.mutable_pooling_param()->set_stride(2);
  OneDNNPoolingLayer<float> onednn(param);
  PoolingLayer<float> caffe(param);
  Blob<float> bottom(1, 2, 4, 4), top, mask, top_caffe, mask_caffe;
  Fill(&bottom);
  vector<Blob<float>*> bottom_vec(1, &bottom);
  vector<Blob<float>*> top_vec = {&top, &mask};
  vector<Blob<float>*> caffe_vec = {&top_caffe, &mask_caffe};
  onednn.SetUp(bottom_vec, top_vec);
  caffe.SetUp(bottom_vec, caffe_vec);
  onednn.Forward(bottom_vec, top_vec);
  caffe.Forward(bottom_vec, caffe_vec);
  ExpectNear(top.cpu_data(), top_caffe.cpu_data(), top.count(), "top");
  ExpectNear(mask.cpu_data(), mask_caffe.cpu_data(), mask.count(), "mask");
}

TEST_F(OneDNNLayerTest, TestAvePoolingPastThePaddingFallsBack) {
  // 6 + 2 * 1 - 3 = 5, ceil(5 / 2) + 1 = 4 windows: the last reaches one
  // cell past the padding, which Caffe's average leaves out.
  LayerParameter param;
  param.set_name("ave_past_padding");
  PoolingParameter* pool = param.mutable_pooling_param();
  pool->set_pool(PoolingParameter_PoolMethod_AVE);
  pool->set_kernel_size(3);
  pool->set_stride(2);
  pool->set_pad(1);
  OneDNNPoolingLayer<float> onednn(param);
  PoolingLayer<float> caffe(param);
  ExpectSameAsCaffe(&onednn, &caffe, {2, 2, 6, 6}, false);
}

// --- ReLU ---------------------------------------------------------------

TEST_F(OneDNNLayerTest, TestReLU) {
  const float slopes[] = {0.f, 0.1f};
  for (float slope : slopes) for (int in_place = 0; in_place < 2;
                                  ++in_place) {
    LayerParameter param;
    param.mutable_relu_param()->set_negative_slope(slope);
    param.mutable_relu_param()->set_engine(ReLUParameter_Engine_ONEDNN);
    SCOPED_TRACE("slope " + std::to_string(slope) + " in place " +
                 std::to_string(in_place));
    OneDNNReLULayer<float> onednn(param);
    ReLULayer<float> caffe(param);
    ExpectSameAsCaffe(&onednn, &caffe, {2, 3, 5, 4}, in_place);
  }
}

TEST_F(OneDNNLayerTest, TestReLUGradient) {
  LayerParameter param;
  param.mutable_relu_param()->set_negative_slope(0.01f);
  OneDNNReLULayer<float> layer(param);
  Blob<float> bottom(2, 3, 4, 5), top;
  Fill(&bottom);
  vector<Blob<float>*> bottom_vec(1, &bottom), top_vec(1, &top);
  GradientChecker<float> checker(1e-2, 1e-3, 1701, 0., 0.01);
  checker.CheckGradientEltwise(&layer, bottom_vec, top_vec);
}

// --- LRN ----------------------------------------------------------------

TEST_F(OneDNNLayerTest, TestLRNGrid) {
  // The windows oneDNN's kernels take (5 channels across, 3 or 5 within),
  // on channel counts they block, and k, alpha and beta away from 1.
  const LRNParameter_NormRegion regions[] = {
      LRNParameter_NormRegion_ACROSS_CHANNELS,
      LRNParameter_NormRegion_WITHIN_CHANNEL};
  for (LRNParameter_NormRegion region : regions) for (int size : {3, 5}) {
    LayerParameter param;
    LRNParameter* lrn = param.mutable_lrn_param();
    lrn->set_norm_region(region);
    lrn->set_local_size(size);
    lrn->set_alpha(0.7f);
    lrn->set_beta(0.6f);
    lrn->set_k(1.5f);
    lrn->set_engine(LRNParameter_Engine_ONEDNN);
    SCOPED_TRACE("region " + std::to_string(region) + " size " +
                 std::to_string(size));
    OneDNNLRNLayer<float> onednn(param);
    LRNLayer<float> caffe(param);
    ExpectSameAsCaffe(&onednn, &caffe, {2, 16, 7, 6}, false);
  }
}

TEST_F(OneDNNLayerTest, TestLRNGradient) {
  LayerParameter param;
  param.mutable_lrn_param()->set_alpha(0.5f);
  param.mutable_lrn_param()->set_engine(LRNParameter_Engine_ONEDNN);
  OneDNNLRNLayer<float> layer(param);
  Blob<float> bottom(2, 16, 4, 5), top;
  Fill(&bottom);
  vector<Blob<float>*> bottom_vec(1, &bottom), top_vec(1, &top);
  GradientChecker<float> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, bottom_vec, top_vec);
}

// --- InnerProduct -------------------------------------------------------

TEST_F(OneDNNLayerTest, TestInnerProductGrid) {
  const int axes[] = {1, 2, -1};
  for (int axis : axes) for (int transpose = 0; transpose < 2; ++transpose)
  for (int bias = 0; bias < 2; ++bias) {
    LayerParameter param;
    InnerProductParameter* ip = param.mutable_inner_product_param();
    ip->set_num_output(7);
    ip->set_axis(axis);
    ip->set_transpose(transpose);
    ip->set_bias_term(bias);
    // oneDNN's backward even where the default engine would run Caffe's
    ip->set_engine(InnerProductParameter_Engine_ONEDNN);
    SCOPED_TRACE("axis " + std::to_string(axis) + " transpose " +
        std::to_string(transpose) + " bias " + std::to_string(bias));
    OneDNNInnerProductLayer<float> onednn(param);
    InnerProductLayer<float> caffe(param);
    ExpectSameAsCaffe(&onednn, &caffe, {3, 4, 5, 2}, false);
  }
}

TEST_F(OneDNNLayerTest, TestInnerProductGradient) {
  LayerParameter param;
  InnerProductParameter* ip = param.mutable_inner_product_param();
  ip->set_num_output(5);
  ip->set_transpose(true);
  ip->set_engine(InnerProductParameter_Engine_ONEDNN);
  ip->mutable_weight_filler()->set_type("gaussian");
  ip->mutable_bias_filler()->set_type("gaussian");
  OneDNNInnerProductLayer<float> layer(param);
  Blob<float> bottom(3, 2, 3, 2), top;
  Fill(&bottom);
  vector<Blob<float>*> bottom_vec(1, &bottom), top_vec(1, &top);
  GradientChecker<float> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, bottom_vec, top_vec);
}

// --- Which engine a net gets ---------------------------------------------

template <typename Expected>
static bool Creates(const std::string& type, const std::string& engine) {
  LayerParameter param;
  param.set_name("layer");
  param.set_type(type);
  param.mutable_convolution_param()->set_num_output(1);
  param.mutable_convolution_param()->add_kernel_size(1);
  if (!engine.empty()) {
    if (type == "Convolution") {
      ConvolutionParameter_Engine value;
      CHECK(ConvolutionParameter_Engine_Parse(engine, &value));
      param.mutable_convolution_param()->set_engine(value);
    } else if (type == "InnerProduct") {
      InnerProductParameter_Engine value;
      CHECK(InnerProductParameter_Engine_Parse(engine, &value));
      param.mutable_inner_product_param()->set_engine(value);
    } else if (type == "ReLU") {
      ReLUParameter_Engine value;
      CHECK(ReLUParameter_Engine_Parse(engine, &value));
      param.mutable_relu_param()->set_engine(value);
    } else if (type == "LRN") {
      LRNParameter_Engine value;
      CHECK(LRNParameter_Engine_Parse(engine, &value));
      param.mutable_lrn_param()->set_engine(value);
    }
  }
  shared_ptr<Layer<float> > layer = LayerRegistry<float>::CreateLayer(param);
  return dynamic_cast<Expected*>(layer.get()) != NULL;
}

TEST_F(OneDNNLayerTest, TestEngineChoice) {
  EXPECT_TRUE(Creates<OneDNNConvolutionLayer<float> >("Convolution", ""));
  EXPECT_TRUE(Creates<OneDNNPoolingLayer<float> >("Pooling", ""));
  EXPECT_TRUE(Creates<OneDNNReLULayer<float> >("ReLU", ""));
  EXPECT_TRUE(Creates<OneDNNReLULayer<float> >("ReLU", "ONEDNN"));
  EXPECT_TRUE(Creates<OneDNNInnerProductLayer<float> >("InnerProduct", ""));
  EXPECT_TRUE(Creates<OneDNNLRNLayer<float> >("LRN", ""));
  EXPECT_FALSE(Creates<OneDNNConvolutionLayer<float> >("Convolution",
                                                       "CAFFE"));
  EXPECT_FALSE(Creates<OneDNNInnerProductLayer<float> >("InnerProduct",
                                                        "CAFFE"));
  setenv("CAFFE_ENGINE", "caffe", 1);
  EXPECT_FALSE(Creates<OneDNNConvolutionLayer<float> >("Convolution", ""));
  EXPECT_FALSE(Creates<OneDNNReLULayer<float> >("ReLU", ""));
  EXPECT_TRUE(Creates<OneDNNConvolutionLayer<float> >("Convolution",
                                                      "ONEDNN"));
  unsetenv("CAFFE_ENGINE");
  EXPECT_FALSE(Creates<OneDNNLRNLayer<float> >("LRN", "CAFFE"));
  setenv("CAFFE_ENGINE", "onednn", 1);   // and layers that name CAFFE too
  EXPECT_TRUE(Creates<OneDNNLRNLayer<float> >("LRN", "CAFFE"));
  EXPECT_TRUE(Creates<OneDNNConvolutionLayer<float> >("Convolution", "CAFFE"));
  setenv("CAFFE_ENGINE", "cafe", 1);
  EXPECT_THROW(Creates<OneDNNPoolingLayer<float> >("Pooling", ""), Error);
  unsetenv("CAFFE_ENGINE");
}

}  // namespace caffe
#endif  // USE_ONEDNN
