"""What an l2 certificate rests on: operators, power iteration, norm bounds, box / ball propagation,
activation masks, global and local Lipschitz bounds (Huang21), and a registry of named bounds.

Labels used everywhere (``Certificate.bound``, ``lipcert bounds``):
"exact" -- exact value (up to a rigorous float64 slack), "upper" -- provable upper bound,
"estimate" -- power iteration (a lower bound of each factor), as in the paper, NOT a proof.
"""

from .ball import margin_lower_bounds
from .chain import ChainError, ChainForward, LipschitzChain, Propagation, Stage
from .lipschitz import (
    global_kinds,
    global_sigmas,
    global_upper,
    local_sigmas,
    local_upper,
    local_vector_numel,
    product_rows_upper,
    product_upper,
)
from .norms import conv_norm_upper, dense_norm_upper, reduced_dense_norm_upper
from .operators import Composed, ConvOp, DenseOp, LinearOp, Masked
from .power import PowerResult, VectorStore, power_iteration
from .analysis import L2Bounds, LocalResult
from .registry import BOUNDS, BoundContext, BoundSpec, BoundValue, bounds_summary, compute_bounds, register_bound
from .ltnet import LTError, LTNet, register_slopes, slope_bounds  # LipLT (Fazlyab23)
from .liplt import LipLTEstimator, LipLTResult, liplt, naive_bounds
from .span_norms import Budget
from . import pairwise  # noqa: E402  (registers naive / liplt / pairwise_* with `lipcert bounds`)

__all__ = [
    "BOUNDS",
    "BoundContext",
    "BoundSpec",
    "BoundValue",
    "L2Bounds",
    "LocalResult",
    "ChainError",
    "ChainForward",
    "Composed",
    "ConvOp",
    "DenseOp",
    "LinearOp",
    "LipschitzChain",
    "Masked",
    "PowerResult",
    "Propagation",
    "Stage",
    "VectorStore",
    "bounds_summary",
    "compute_bounds",
    "conv_norm_upper",
    "dense_norm_upper",
    "global_kinds",
    "global_sigmas",
    "global_upper",
    "local_sigmas",
    "local_upper",
    "local_vector_numel",
    "margin_lower_bounds",
    "power_iteration",
    "product_rows_upper",
    "product_upper",
    "reduced_dense_norm_upper",
    "register_bound",
]
