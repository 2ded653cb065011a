"""What the image families share: their parameters, layer shapes with analytic costs
(REFERENCE 2.6) and random weights.

Cost conventions, for every conv family:
- FLOPs count 2 per multiply-add, and every tap of a k x k window, padding included
  (what a dense kernel computes, and how the "4.1 G multiply-adds" of ResNet-50 is
  counted). XLA's cost_analysis counts only taps that land inside the image, so it is
  lower for SAME padding on small images.
- Elementwise work (bias, batch norm, ReLU, residual add) is counted as the model
  computes it, one FLOP per operation per element.
- Activation bytes assume the elementwise work is fused into the layer before it:
  each layer reads its input and writes its output once.
"""

import dataclasses
import math

import jax
import numpy as np

from batchlab.numerics import Numerics
from batchlab.workloads.base import Cost, Param

IMAGE_SIZE = Param(
    "image_size",
    "image_sizes",
    int,
    (56,),
    "Height and width of the square input image, in pixels.",
    minimum=1,
)
CHANNELS = Param(
    "channels",
    "channels",
    int,
    (64,),
    "Channels of the input feature map (a conv layer keeps them: C_in = C_out).",
    minimum=1,
)
KERNEL_SIZE = Param(
    "kernel_size",
    "kernel_sizes",
    int,
    (3,),
    "Side k of the square window: the conv kernel or the pooling window.",
    minimum=1,
)
STRIDE = Param("stride", "strides", int, (1,), "Stride of the window along H and W.", minimum=1)
PADDING = Param(
    "padding",
    "paddings",
    str,
    ("SAME",),
    "SAME (output side ceil(n/stride)) or VALID (no padding).",
    choices=("SAME", "VALID"),
)
LAYOUT = Param(
    "layout",
    "layouts",
    str,
    ("NHWC",),
    "Memory layout of images and feature maps; Flax convolutions take NHWC only.",
    choices=("NHWC",),
)


def output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Side of the output of a k x k window sliding over a `size` x `size` input."""
    if padding == "SAME":
        return -(-size // stride)
    return (size - kernel) // stride + 1


@dataclasses.dataclass(frozen=True)
class Conv2D:
    """One k x k convolution of a square NHWC input, as the cost model sees it."""

    size: int  # input height = width
    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    padding: str = "SAME"

    @property
    def out_size(self) -> int:
        return output_size(self.size, self.kernel, self.stride, self.padding)

    @property
    def multiply_adds(self) -> int:
        """Per example: every output element takes k·k·C_in multiply-adds."""
        return self.out_size**2 * self.c_out * self.kernel**2 * self.c_in

    def cost(
        self, batch: int, numerics: Numerics, per_channel_weights: int = 0, elementwise: int = 0
    ) -> Cost:
        """REFERENCE 2.6 with output pixels for stride and padding: 2·b·Ho·Wo·k²·C_in·C_out.

        `per_channel_weights` counts weights per output channel beside the kernel (a bias:
        1; batch norm: 4); `elementwise` counts FLOPs per output element after the conv.
        """
        s = numerics.itemsize
        out_elements = batch * self.out_size**2 * self.c_out
        return Cost(
            flops=2 * batch * self.multiply_adds + elementwise * out_elements,
            weight_bytes=s * (self.kernel**2 * self.c_in + per_channel_weights) * self.c_out,
            activation_bytes=s * (batch * self.size**2 * self.c_in + out_elements),
        )


@dataclasses.dataclass(frozen=True)
class Pool2D:
    """Max or average pooling of a square NHWC input over k x k windows."""

    kind: str  # "max" or "avg"
    size: int
    channels: int
    window: int
    stride: int
    padding: str = "SAME"

    @property
    def out_size(self) -> int:
        return output_size(self.size, self.window, self.stride, self.padding)

    def cost(self, batch: int, numerics: Numerics) -> Cost:
        """REFERENCE 2.6: k² − 1 comparisons (max) or k² − 1 adds and a divide (avg) per
        output; bytes s_a·b·C·(H·W + Ho·Wo), i.e. H·W·(1 + 1/stride²) for SAME padding."""
        s = numerics.itemsize
        out_elements = batch * self.out_size**2 * self.channels
        per_output = self.window**2 - (self.kind == "max")
        return Cost(
            flops=per_output * out_elements,
            weight_bytes=0,
            activation_bytes=s * (batch * self.size**2 * self.channels + out_elements),
        )


def total(costs) -> Cost:
    return sum(costs, Cost(0, 0, 0))


def random_variables(abstract, key):
    """Random non-zero values for a Flax variables tree given by its shapes.

    model.init compiles one random-number kernel per weight shape, which took ~15 s for
    ResNet-50 on the 2-core CPU, at every point; one normal draw split on the host does
    not. Kernels get LeCun-normal scale (var 1/fan_in), biases and batch-norm shifts and
    means small values, scales and variances values near 1.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    sizes = [math.prod(leaf.shape) for _, leaf in leaves]
    draws = np.asarray(jax.random.normal(key, (sum(sizes),)))
    values = []
    for (path, leaf), n, start in zip(leaves, sizes, np.cumsum([0, *sizes])):
        z = draws[start : start + n].reshape(leaf.shape)
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            v = z / math.sqrt(math.prod(leaf.shape[:-1]))
        elif name in ("scale", "var"):
            v = np.exp(0.1 * z)  # positive, near 1
        else:  # bias, mean
            v = 0.02 * z
        values.append(jax.device_put(v.astype(leaf.dtype)))
    return jax.tree_util.tree_unflatten(treedef, values)
