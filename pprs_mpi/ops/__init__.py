"""The node library: every op is pure, batched along axis 0, and written against an array module; `TorchOp`
and `JaxOp` make a PyTorch or JAX function a node (those frameworks are imported only when one is made)."""

from pprs_mpi.ops.base import Op
from pprs_mpi.ops.conv import Conv2d, MaxPool2d
from pprs_mpi.ops.elementwise import Abs, Add, LinearCombination, ReLU, Scale, Square
from pprs_mpi.ops.linear import Affine, MaxAffine, ParamAffine, ParamAffineInput
from pprs_mpi.ops.losses import Hinge, MultiMargin, MultiMarginMean
from pprs_mpi.ops.reductions import L1Norm, LInfDistance, SquaredNorm, Sum
from pprs_mpi.ops.shape import Flatten, Reshape, Slice
from pprs_mpi.ops.jax_op import JaxOp
from pprs_mpi.ops.torch_op import TorchOp

__all__ = [
    "Op",
    "Abs", "Add", "LinearCombination", "ReLU", "Scale", "Square",
    "Flatten", "Reshape", "Slice",
    "Sum", "SquaredNorm", "L1Norm", "LInfDistance",
    "Affine", "MaxAffine", "ParamAffine", "ParamAffineInput",
    "Conv2d", "MaxPool2d",
    "Hinge", "MultiMargin", "MultiMarginMean",
    "TorchOp", "JaxOp",
]
