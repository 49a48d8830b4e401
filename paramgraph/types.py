"""Integer codes stored in a :class:`~paramgraph.ParamGraph`.

Every categorical fact about a node or an edge is an integer so that a metanet can embed it and
graphs of different architectures batch together. The codes are part of the file format: append new
members, never renumber old ones.
"""

from __future__ import annotations

from enum import IntEnum


class NodeType(IntEnum):
    """What a node (a neuron, or a channel of a convolution) is."""

    INPUT = 0  # a feature/channel of the network's input
    HIDDEN = 1  # output neuron of a linear/conv layer inside the network
    OUTPUT = 2  # a neuron of the network's output
    RESIDUAL = 3  # result of an addition x + f(x)
    NORM = 4  # output of a normalisation layer that could not be folded into the previous neurons
    COPY = 5  # an activation applied to a value that is also used un-activated elsewhere
    ATTN_Q = 6  # query dimension of an attention head
    ATTN_K = 7  # key dimension of an attention head
    ATTN_V = 8  # value dimension of an attention head (the out-projection reads these)
    PRODUCT = 9  # elementwise product of two values (a squeeze-excitation gate times its input)
    TOKEN = 10  # one token of an embedding table's vocabulary (a one-hot input: fixed)
    POSITION = 11  # one position of a learned positional embedding (a one-hot input: fixed)
    CONSTANT = 12  # a feature of a constant added in forward (sinusoidal positions): fixed
    SEQUENCE = 13  # features of values joined along positions (a CLS token and the patch tokens)
    # One channel whose positions are the features of another value: what a convolution sliding
    # along the channel axis reads (ECA attention's Conv1d over the pooled channel vector).
    CHANNEL_MAP = 14


# The node types of an attention block's query, key and value dimensions.
ATTENTION_NODE_TYPES = (NodeType.ATTN_Q, NodeType.ATTN_K, NodeType.ATTN_V)
# Node types whose order is part of the function: never permuted.
FIXED_NODE_TYPES = (NodeType.INPUT, NodeType.TOKEN, NodeType.POSITION, NodeType.CONSTANT)


class EdgeType(IntEnum):
    """What an edge is. Edges of a *weight* type carry learned values; the others carry 1."""

    LINEAR = 0  # one entry of a Linear weight
    CONV = 1  # one (in channel, out channel) kernel of a convolution, flattened
    FLATTEN_LINEAR = 2  # Linear reading a flattened feature map: one edge per channel, spatial vector
    RESIDUAL = 3  # identity wiring of an addition
    NORM = 4  # identity wiring into a normalisation layer's own neurons
    IDENTITY = 5  # identity wiring into a COPY neuron
    ATTN_IN_Q = 6  # in-projection weight to a query dimension
    ATTN_IN_K = 7  # in-projection weight to a key dimension
    ATTN_IN_V = 8  # in-projection weight to a value dimension
    ATTN_OUT = 9  # out-projection weight from a value dimension
    ATTN_QK = 10  # pairs query dimension i with key dimension i of the same head
    ATTN_KV = 11  # connects every key dimension to every value dimension of the same head
    PRODUCT = 12  # identity wiring of an operand into a PRODUCT neuron (x * gate)
    EMBED = 13  # one entry of an embedding table: token (or position) -> feature
    SEQUENCE = 14  # identity wiring of one part of a concatenation along positions
    ROTARY = 15  # pairs the two dimensions of a query (key) head that a rotary embedding rotates
    CHANNEL_MAP = 16  # feature i into a CHANNEL_MAP neuron, one edge per position, in position order


WEIGHT_EDGE_TYPES = (
    EdgeType.LINEAR,
    EdgeType.CONV,
    EdgeType.FLATTEN_LINEAR,
    EdgeType.ATTN_IN_Q,
    EdgeType.ATTN_IN_K,
    EdgeType.ATTN_IN_V,
    EdgeType.ATTN_OUT,
    EdgeType.EMBED,
)

class Activation(IntEnum):
    """The elementwise function applied at a node, after its bias and normalisation."""

    IDENTITY = 0
    RELU = 1
    LEAKY_RELU = 2
    GELU = 3
    SILU = 4
    TANH = 5
    SIGMOID = 6
    SIN = 7
    RELU6 = 8  # min(max(z, 0), 6): the clip at 6 breaks positive scaling
    HARDSWISH = 9
    HARDSIGMOID = 10
    MISH = 11
    ELU = 12  # also CELU and SELU (scaled ELU)
    SOFTPLUS = 13
    GELU_TANH = 14  # GELU with the tanh approximation
    HARDTANH = 15  # clip to [-m, m] (symmetric limits: odd)
    SOFTSIGN = 16
    CLIP = 17  # clip to an asymmetric range other than ReLU6's [0, 6]
    # softmax across the branches of a branched node set (selective kernel, split attention):
    # node (r, j) is normalised together with the nodes (r', j) of the other branches
    SOFTMAX = 18


# f(q z) = q f(z) for q > 0: a positive per-neuron scaling passes through.
POSITIVELY_HOMOGENEOUS = (Activation.IDENTITY, Activation.RELU, Activation.LEAKY_RELU)
# f(-z) = -f(z): a per-neuron sign flip passes through.
ODD = (Activation.IDENTITY, Activation.TANH, Activation.SIN, Activation.HARDTANH,
       Activation.SOFTSIGN)
# Every other activation (GELU, SiLU, sigmoid, ReLU6, Hardswish, Hardsigmoid, Mish, ELU, Softplus,
# clips) admits neither: only permutations pass through it.


class NormKind(IntEnum):
    """Which normalisation's parameters a node carries."""

    NONE = 0
    BATCH = 1
    LAYER = 2
    GROUP = 3  # GroupNorm: statistics over groups of channels (the groups permute as blocks)
    INSTANCE = 4  # InstanceNorm: statistics per channel and sample
    SCALE = 5  # a learned per-channel multiplier (layer scale): norm_weight only, no statistics
    RMS = 6  # RMSNorm over the features: norm_weight only, no mean subtracted


class HeadRole(IntEnum):
    """The part of an attention head a node belongs to (for the per-head GL symmetry)."""

    NONE = 0
    QK = 1  # query and key dimensions: q_h -> M^T q_h, k_h -> M^-1 k_h
    VO = 2  # value dimensions: v_h -> N^T v_h, out-projection columns -> N^-1
    # GROUP + k: channels of a grouped convolution or GroupNorm (node_head = the group). Groups
    # permute as blocks; inside a block, the channels of each role k permute among themselves.
    GROUP = 3
    # Query and key dimensions of a rotary head: they stay in place inside the head (each pair
    # has its own frequency); per pair only a scaled 2-D rotation commutes with the embedding.
    # Kept far above GROUP + k.
    QK_ROTARY = 100


# Columns of ``ParamGraph.node_value``. A node carries its bias and the per-neuron parameters and
# statistics of the normalisation that follows it; absent entries are 0 and masked out.
NODE_SLOTS = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var")
SLOT = {name: i for i, name in enumerate(NODE_SLOTS)}
