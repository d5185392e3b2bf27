"""The README's GPU Python layer, as written there, for test_gpu.py."""
import cupy

from caffe_pylayer import PythonLayer, gpu


class ScaleLayer(PythonLayer):            # top = 2 * bottom, on either device
    num_bottoms = num_tops = 1

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):       # CPU mode (NumPy)
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff

    def forward_gpu(self, bottom, top):   # GPU mode (CuPy views of Caffe's memory)
        cupy.multiply(gpu.view(bottom[0].gpu_data), 2, out=gpu.view(top[0].gpu_data))

    def backward_gpu(self, top, propagate_down, bottom):
        cupy.multiply(gpu.view(top[0].gpu_diff), 2, out=gpu.view(bottom[0].gpu_diff))
