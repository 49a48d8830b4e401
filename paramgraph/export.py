"""``from_exported``: read a ``torch.export`` program (a ``.pt2`` file) without its Python class.

An :class:`~torch.export.ExportedProgram` carries its own architecture as an ATen-level graph, so a
checkpoint saved with ``torch.export.save`` converts without the code that built it. This front end
walks that graph and calls the same :class:`~paramgraph.builder.GraphBuilder` methods as the
``torch.fx`` front end (:mod:`paramgraph.trace`), reusing its handling of reshapes, flattens,
pooling, reductions, residual additions and concatenation; only the mapping from ATen operators to
those handlers is specific to this module.

Both forms of an exported graph are read: the default one of ``torch.export.export``
(``aten.linear``, ``aten.conv2d``, ``aten.batch_norm``, ``aten.layer_norm``, ...) and the core-ATen
form of ``ep.run_decompositions()`` (``aten.convolution``, ``aten.addmm`` with a transposed weight,
``aten._native_batch_norm_legit_no_training``, ``aten.native_layer_norm``, ...). Parameter names come
from the program's graph signature, so the segments of the graph are named by the original
``state_dict`` keys and :func:`~paramgraph.to_state_dict` reproduces them bit-exactly.

Nothing in the program is run: shapes come from the recorded ``node.meta["val"]``, and
``ep.module()`` (which would compile the program's guard code) is never called. Loading a ``.pt2``
file safely is :func:`paramgraph.checkpoint.load_checkpoint`'s job (``torch.export.load`` alone is not safe
for untrusted files; see there).
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
from torch import Tensor

from .builder import GraphBuilder
from .errors import UnsupportedModuleError, one_line
from . import attention, patterns
from .patterns import op_name
from .trace import (
    Const,
    Data,
    FxConverter,
    TracedValue,
    _branch_op,
    _clip,
    _pad,
    _upsample,
    _expand_any,
    _gelu_code,
    _is_param,
    _ParamView,
    _param_of,
    _Pieces,
    _reshape_any,
    _stack,
    data_of,
    node_arg,
)
from .types import Activation, NormKind

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph

SUPPORTED_EXPORT = (
    "aten linear, addmm/mm with a transposed parameter, conv1d/conv2d/conv3d/convolution "
    "(grouped and depthwise too, not transposed), batch_norm and its native forms, "
    "layer_norm/native_layer_norm over the features, group_norm/native_group_norm, relu, relu6, "
    "leaky_relu, gelu (also tanh), silu, mish, elu/celu/selu, softplus, hardswish, hardsigmoid, "
    "hardtanh, clamp, tanh, sigmoid, sin (optionally of x * constant), x * sigmoid(x), "
    "x * gate, parameter * x (layer scale), add of two activations, cat/split/chunk/slice on "
    "features, channel shuffle, view/reshape/flatten/squeeze/unsqueeze, permute/transpose, "
    "mean/sum/amax over positions, stack/softmax/sum/mul on branches side by side (selective "
    "kernel, split attention), conv1d along the channels of one pooled channel (ECA), "
    "pad/constant_pad_nd of positions, upsample_nearest/bilinear/..., "
    "avg/max/adaptive pooling, in-place forms (functionalised "
    "first), the no-ops dropout, clone, alias, detach, contiguous, _to_copy, embedding, rms_norm, "
    "addmm with a raw [in, out] weight (GPT-2 Conv1D), constants computed from shapes (zeros, "
    "arange, sin/cos, slice_scatter: folded), and attention written out (matmul, softmax, "
    "scaled_dot_product_attention, rotary embeddings). nn.MultiheadAttention modules are not "
    "supported from exported programs: convert the live module with paramgraph.from_module"
)

_ACTIVATIONS = {
    "relu": Activation.RELU, "relu_": Activation.RELU, "leaky_relu": Activation.LEAKY_RELU,
    "leaky_relu_": Activation.LEAKY_RELU, "gelu": Activation.GELU, "gelu_": Activation.GELU,
    "silu": Activation.SILU, "silu_": Activation.SILU, "tanh": Activation.TANH,
    "tanh_": Activation.TANH, "sigmoid": Activation.SIGMOID, "sigmoid_": Activation.SIGMOID,
    "sin": Activation.SIN, "sin_": Activation.SIN, "relu6": Activation.RELU6,
    "hardswish": Activation.HARDSWISH, "hardswish_": Activation.HARDSWISH,
    "hardsigmoid": Activation.HARDSIGMOID, "hardsigmoid_": Activation.HARDSIGMOID,
    "mish": Activation.MISH, "mish_": Activation.MISH, "elu": Activation.ELU,
    "elu_": Activation.ELU, "celu": Activation.ELU, "celu_": Activation.ELU,
    "selu": Activation.ELU, "selu_": Activation.ELU, "softplus": Activation.SOFTPLUS,
}
_TRANSPARENT = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "clone",
                "alias", "detach", "contiguous", "_to_copy", "to", "lift_fresh_copy"}
_TRANSPARENT_TUPLE = {"native_dropout"}  # (output, mask)
_RESHAPE = {"view", "reshape", "_unsafe_view", "flatten", "squeeze", "unsqueeze", "unflatten"}
_TRANSPOSE = {"transpose", "t", "permute", "swapaxes", "swapdims"}
_POOL = {
    "avg_pool1d": "avg", "avg_pool2d": "avg", "avg_pool3d": "avg", "adaptive_avg_pool1d": "avg",
    "adaptive_avg_pool2d": "avg", "adaptive_avg_pool3d": "avg", "_adaptive_avg_pool2d": "avg",
    "_adaptive_avg_pool3d": "avg", "max_pool1d": "max", "max_pool2d": "max", "max_pool3d": "max",
}
_POOL_TUPLE = {  # (output, indices)
    "max_pool1d_with_indices": "max", "max_pool2d_with_indices": "max",
    "max_pool3d_with_indices": "max", "adaptive_max_pool1d": "max", "adaptive_max_pool2d": "max",
    "adaptive_max_pool3d": "max",
}
_REDUCE = {"mean": "avg", "sum": "avg", "amax": "max"}
_BATCH_NORM = {"batch_norm", "native_batch_norm", "_native_batch_norm_legit",
               "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional"}
_SHAPE_QUERIES = {"sym_size", "sym_numel", "sym_stride", "sym_storage_offset"}
_ATTENTION_OPS = {"_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_efficient_attention", "_native_multi_head_attention",
                  "_scaled_dot_product_flash_attention_for_cpu", "baddbmm"}
# Attention written out (paramgraph.attention) on values that are not yet split into heads.
_ATTENTION_CORE = {"scaled_dot_product_attention", "matmul", "bmm"}
_NOT_CONSTANT = object()
_ATTENTION_MODULES = ("MultiheadAttention", "TransformerEncoderLayer", "TransformerEncoder",
                      "TransformerDecoderLayer", "TransformerDecoder", "Transformer")


def from_exported(ep: torch.export.ExportedProgram) -> ParamGraph:
    """Convert an exported program into a :class:`ParamGraph`.

    Returns the graph; its segments are named by the program's ``state_dict`` keys (the original
    module's keys), so ``paramgraph.to_state_dict(graph)`` equals those tensors bit-exactly (every
    converted parameter and buffer; counters like ``num_batches_tracked`` are not converted and are
    listed nowhere, other unused entries are listed in ``graph.segments.unplaced``). Batch norm is
    read as its inference form, whatever mode the module was exported in, as :func:`from_module`
    does. The program is not run and ``ep.module()`` is not called.

    Raises :class:`~paramgraph.UnsupportedModuleError` naming the submodule (from the program's
    module stack), the ATen operator and what is supported, for operators or data flow the graph
    cannot represent, and for attention (not supported from exported programs).
    """
    if not isinstance(ep, torch.export.ExportedProgram):
        raise TypeError(f"from_exported expects a torch.export.ExportedProgram, got "
                        f"{type(ep).__name__}")
    if _has_inplace(ep):  # out += identity: functionalise (the operators themselves stay)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = ep.run_decompositions({})
        except Exception as err:
            op = _has_inplace(ep)
            raise UnsupportedModuleError("", f"aten.{op}", "in-place operations could not be "
                                         f"functionalised ({one_line(err, 200)}); call "
                                         "ep.run_decompositions() before saving the program"
                                         ) from err
    return _ExportConverter(ep).run()


def _has_inplace(ep: torch.export.ExportedProgram) -> str | None:
    """The first in-place ATen operator of ``ep`` (``add_``, ``relu_``), or None."""
    for node in ep.graph.nodes:
        if node.op == "call_function" and hasattr(node.target, "overloadpacket"):
            name = node.target.overloadpacket.__name__
            if name.endswith("_") and not name.endswith("__") and name not in ("_to_copy_",):
                return name
    return None


@dataclass
class _Multi:
    """An ATen operator's tuple result whose element 0 is the value (the rest are statistics)."""

    value: TracedValue
    op: str


@dataclass
class _Transposed:
    """A 2-d parameter viewed transposed (the core-ATen form of a linear layer's weight)."""

    name: str
    tensor: Tensor


class _ExportConverter(FxConverter):
    """The fx converter's value handling, driven by an exported program's ATen graph."""

    def __init__(self, ep: torch.export.ExportedProgram):  # noqa: D107 (no super(): no nn.Module)
        self.ep = ep
        self.gm = ep.graph_module
        self.b = GraphBuilder()
        self.env: dict[fx.Node, object] = {}
        self.called: set[str] = set()
        self.modules: dict = {}
        self.root = type(_root_type(ep), (), {})()  # error messages name the exported class
        sig = ep.graph_signature
        self.tensors: dict[str, tuple[str, Tensor] | Const] = {}
        self.constants, self.literals = {}, {}
        for placeholder, fqn in {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                                 **sig.inputs_to_lifted_tensor_constants}.items():
            tensor = ep.state_dict.get(fqn)
            if isinstance(tensor, Tensor):
                self.tensors[placeholder] = (fqn, tensor.detach())
            elif isinstance(ep.constants.get(fqn), Tensor):  # non-persistent buffers (inv_freq)
                self.tensors[placeholder] = Const(ep.constants[fqn].detach())
        self.b.aliases = _aliases(ep.state_dict)
        self.user_inputs = list(sig.user_inputs)
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        results = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) \
            else [output.args[0]]
        kinds = [spec.kind for spec in sig.output_specs]
        user = torch.export.graph_signature.OutputKind.USER_OUTPUT
        self.user_outputs = [r for r, k in zip(results, kinds) if k == user]
        self.live = _ancestors([r for r in self.user_outputs if isinstance(r, fx.Node)])

    # -- driver ----------------------------------------------------------------------------------

    def run(self) -> ParamGraph:
        used_inputs = [n for n in self.gm.graph.nodes if n.op == "placeholder"
                       and n.name in self.user_inputs and n in self.live]
        self.fused, self.skip = patterns.find(  # layers written out (HF's RMSNorm, gelu_new)
            self.gm.graph, lambda n: n.op == "placeholder" and isinstance(self.tensors.get(n.name),
                                                                          tuple))
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = self._placeholder(node, used_inputs)
            elif node.op == "output":
                for item in self.user_outputs:
                    self._output(item)
            elif node not in self.live:
                self.env[node] = None  # counters, running-stat updates, assertions
            elif node in self.skip or node in self.fused:
                self.env[node] = self._written_out(node)
            elif node.op == "call_function":
                self.env[node] = self._aten(node)
            else:
                raise UnsupportedModuleError(self._path(node), f"{node.op} {node.target}",
                                             "this graph operation is not supported")
        placed = {s.name for s in self.b.segments}
        unplaced = tuple(k for k in self.ep.state_dict if k not in placed
                         and not k.endswith("num_batches_tracked"))
        if unplaced:
            warnings.warn(f"{len(unplaced)} state_dict entries are not used by the exported "
                          f"program's output and are not in the graph: {', '.join(unplaced[:5])}",
                          stacklevel=3)
        return self.b.finalize(unplaced, order=state_dict_order(self.ep))

    def _placeholder(self, node: fx.Node, used_inputs: list[fx.Node]):
        if node.name in self.tensors:
            return self.tensors[node.name]
        if node.name in self.user_inputs:
            if node not in self.live:
                return None
            return self._input(node, node.meta.get("val"))
        return None  # tokens and script objects: nothing reads them as activations

    # -- values ----------------------------------------------------------------------------------

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)) and val and isinstance(val[0], Tensor):
            val = val[0]
        if not isinstance(val, Tensor):
            return ()
        shape = []
        for d in val.shape:
            if isinstance(d, int):
                shape.append(d)
                continue
            hint = getattr(getattr(d, "node", None), "hint", None)
            if hint is None:
                raise UnsupportedModuleError(self._path(node), str(node.target), f"dimension {d} "
                                             "of its output has no concrete size")
            shape.append(int(hint))
        return tuple(shape)

    def _take(self, node: fx.Node, arg) -> TracedValue:
        val = super()._take(node, arg)
        # The fx converter counts every user; here users that do not reach the output (shape
        # assertions, running-stat updates) must not stop a normalisation from folding.
        if isinstance(arg, fx.Node) and len(arg.users) > 1 \
                and sum(u in self.live for u in arg.users) <= 1:
            val = self.env[arg]
        return val

    # -- ATen operators --------------------------------------------------------------------------

    def _aten(self, node: fx.Node):
        path, t, args = self._path(node), node.target, node.args
        branch = _branch_op(self, node)  # selective kernel / split attention branches
        if branch is not None:
            return branch(self, node, path)
        if attention.reads_heads(self, node):
            return attention.call(self, node, op_name(node))
        folded = self._fold(node)
        if folded is not _NOT_CONSTANT:
            return folded
        if t is operator.getitem:
            return self._getitem(node)
        name = op_name(node)
        _check_not_attention(node, path, name)
        if name in _ATTENTION_CORE:
            return attention.call(self, node, name)
        if name == "embedding":  # aten.embedding(weight, indices, ...)
            (w,) = self._attr_args(node, 0, ("weight",))
            return self._embed(node, self.env.get(args[1]), w, path)
        if name == "rms_norm":
            (w,) = self._attr_args(node, 2, ("weight",))
            return self._rms_norm(node, self._take(node, args[0]), path,
                                  node_arg(node, 1, "normalized_shape"), w)
        if name == "expand" and _is_param(self.env.get(args[0])):
            return _ParamView(*_param_of(self.env[args[0]]), self._shape(node))
        if name in ("expand", "expand_as"):
            return _expand_any(self, node, path)
        if name == "select":
            return self._select_position(node, path)
        if name in _SHAPE_QUERIES:
            return None
        if name in ("sigmoid", "sigmoid_") and _silu_product(node, self.live) is not None:
            return None  # the sigmoid half of a decomposed silu, x * sigmoid(x): see _product
        if name in ("gelu", "gelu_"):
            code = _gelu_code(node_arg(node, 1, "approximate", "none"))
            return self._activation(node, self._take(node, args[0]), code)
        if name in _ACTIVATIONS:
            return self._activation(node, self._take(node, args[0]), _ACTIVATIONS[name])
        if name in ("hardtanh", "hardtanh_", "clamp", "clamp_", "clamp_min", "clamp_min_"):
            lo = node_arg(node, 1, "min_val" if name.startswith("hardtanh") else "min",
                          -1.0 if name.startswith("hardtanh") else None)
            hi = None if name.startswith("clamp_min") else node_arg(
                node, 2, "max_val" if name.startswith("hardtanh") else "max",
                1.0 if name.startswith("hardtanh") else None)
            if any(isinstance(v, fx.Node) for v in (lo, hi)):
                raise UnsupportedModuleError(path, f"aten.{name}", "clamping to tensor limits is "
                                             "not supported")
            return self._activation(node, self._take(node, args[0]), _clip(lo, hi))
        if name in ("split", "split_with_sizes", "chunk"):
            return self._split(node, name)
        if name == "slice":
            return self._slice(node, path)
        if name in ("group_norm", "native_group_norm"):
            return self._group_norm_op(node, path, name)
        if name == "instance_norm":
            return self._instance_norm_op(node, path)
        if name in _TRANSPARENT:
            return self._take(node, args[0])
        if name in _TRANSPARENT_TUPLE:
            return _Multi(self._take(node, args[0]), name)
        if name == "mul":
            return self._product(node, path)
        if name in _RESHAPE:
            return _reshape_any(self, node, path)
        if name in _TRANSPOSE:
            return self._transpose(node, path, name)
        if name == "add":
            return self._add(node)
        if name == "cat":
            return self._cat(node)
        if name == "stack":
            return _stack(self, node, path)
        if name in ("pad", "constant_pad_nd"):
            return _pad(self, node, path)
        if name.startswith(("upsample_", "_upsample_")):  # upsample_nearest2d, _bilinear2d, ...
            return _upsample(self, node, path, "nearest" if "nearest" in name else "linear")
        if name in _POOL:
            return self._pool(node, self._take(node, args[0]), _POOL[name])
        if name in _POOL_TUPLE:
            return _Multi(self._pool(node, self._take(node, args[0]), _POOL_TUPLE[name]), name)
        if name in _REDUCE:
            dims = node_arg(node, 1, "dim")
            if dims is None or (isinstance(dims, (tuple, list)) and not dims):
                raise UnsupportedModuleError(path, f"aten.{name}", "reduces over every dimension, "
                                             "the features included")
            return self._reduce(node, _REDUCE[name])
        if name == "linear":
            w, b = self._attr_args(node, 1, ("weight", "bias"))
            return self._linear(node, self._take(node, args[0]), path, w, b)
        if name in ("addmm", "mm", "matmul"):
            return self._matmul(node, path, name)
        if name in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution"):
            return self._convolution(node, path, name)
        if name in _BATCH_NORM:
            return self._batch_norm_op(node, path, name)
        if name in ("layer_norm", "native_layer_norm"):
            w, b = self._attr_args(node, 2, ("weight", "bias"))
            out = self._layer_norm(node, self._take(node, args[0]), path,
                                   node_arg(node, 1, "normalized_shape"), w, b)
            return out if name == "layer_norm" else _Multi(out, name)
        raise UnsupportedModuleError(path, f"aten.{name}", "this operation is not supported; "
                                     "convert the live module with --arch instead, or rewrite the "
                                     "operation (paramgraph inspect --supported lists them)")

    def _fold(self, node: fx.Node):
        """The value of an operation on constants only (``zeros``, ``arange``, ``sin``,
        ``slice_scatter`` of sinusoidal positions): evaluated here, as the fx front end's shape
        pass does; an operation on token ids or masks is :class:`Data`."""
        data = data_of(self, node, op_name(node))
        if data is not None:
            return data
        inputs = [self.env.get(a) for a in node.all_input_nodes]
        if not all(isinstance(v, Const) for v in inputs) or not hasattr(node.target, "_schema") \
                or node.target._schema.is_mutable:
            return _NOT_CONSTANT
        if not inputs and not node.target._schema.returns:
            return _NOT_CONSTANT

        def value(a):
            return self.env[a].value if isinstance(a, fx.Node) else a

        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        with torch.no_grad():
            out = node.target(*args, **kwargs)
        if isinstance(out, Tensor):
            return Const(out)
        if isinstance(out, (tuple, list)) and all(isinstance(o, Tensor) for o in out):
            return _Pieces([Const(o) for o in out])
        return _NOT_CONSTANT

    def _select_position(self, node: fx.Node, path: str):
        """``aten.select(x, dim, i)`` on a dimension other than the features (``x[:, 0]``)."""
        val = self._take(node, node.args[0])
        dim = node.args[1] % len(val.shape)
        if val.feat is None or dim == self._fdim(val):
            raise UnsupportedModuleError(path, "aten.select", "it selects a single feature; "
                                         "slices of the features are supported")
        fdim = self._fdim(val)
        return TracedValue(val.feat, self._shape(node), fdim - (dim < fdim))

    def _getitem(self, node: fx.Node):
        src, index = node.args
        val = self.env.get(src)
        if isinstance(val, _Multi):
            if index == 0:
                return val.value
            raise UnsupportedModuleError(self._path(node), f"aten.{val.op}", f"its output {index} "
                                         "is used; only its main output is supported")
        return super()._getitem(node)

    def _transpose(self, node: fx.Node, path: str, name: str):
        src = node.args[0]
        param = self.env.get(src) if isinstance(src, fx.Node) else None
        if isinstance(param, tuple) and len(param) == 2 and isinstance(param[1], Tensor):
            if param[1].dim() == 2 and _moved_dim(node, name, 0, 2) == 1:
                return _Transposed(*param)  # W^T, read by addmm/mm below
            raise UnsupportedModuleError(path, f"aten.{name}", f"it rearranges parameter "
                                         f"'{param[0]}'; only the transpose of a 2-d weight is "
                                         "supported")
        val = self._take(node, src)
        if val.feat is None:
            return TracedValue(None, self._shape(node), -1)
        if val.split is not None:
            return self._swap_split(node, val, node.args[1:3] if name in ("transpose", "swapaxes",
                                                                            "swapdims") else None)
        fdim = _moved_dim(node, name, self._fdim(val), len(val.shape))
        return TracedValue(val.feat, self._shape(node), fdim)

    def _matmul(self, node: fx.Node, path: str, name: str):
        if name == "addmm":
            bias_arg, x_arg, w_arg = node.args[:3]
            if node_arg(node, 3, "beta", 1) != 1 or node_arg(node, 4, "alpha", 1) != 1:
                raise UnsupportedModuleError(path, "aten.addmm", "beta/alpha other than 1 are not "
                                             "supported")
            (bias,) = self._attr_args(node, 0, ("bias",))
        else:
            x_arg, w_arg = node.args[:2]
            bias = None
        w = self.env.get(w_arg) if isinstance(w_arg, fx.Node) else None
        if name == "addmm" and _is_param(w) and not isinstance(w, _ParamView):
            # GPT-2's Conv1D: addmm(bias, x, W) with W stored [in, out]
            feat = self.b.linear(self._feat(self._take(node, x_arg), "last"), w, bias, path,
                                 transposed=True)
            return self._result(node, feat)
        if not isinstance(w, _Transposed):
            raise UnsupportedModuleError(path, f"aten.{name}", "only a product with a transposed "
                                         "weight parameter (a linear layer) is supported; "
                                         "use nn.Linear")
        return self._linear(node, self._take(node, x_arg), path, (w.name, w.tensor), bias)

    def _convolution(self, node: fx.Node, path: str, name: str):
        if name in ("convolution", "_convolution"):
            if node_arg(node, 6, "transposed", False):
                raise UnsupportedModuleError(path, f"aten.{name}", "transposed convolutions are not "
                                             "supported")
            groups = node_arg(node, 8, "groups", 1)
        else:
            groups = node_arg(node, 6, "groups", 1)
        w, b = self._attr_args(node, 1, ("weight", "bias"))
        return self._conv(node, self._take(node, node.args[0]), path, w, b, groups)

    def _group_norm_op(self, node: fx.Node, path: str, name: str):
        if name == "group_norm":  # (input, num_groups, weight, bias, eps, cudnn_enabled)
            groups = node_arg(node, 1, "num_groups")
            w, b = self._attr_args(node, 2, ("weight", "bias"))
        else:  # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
            groups = node_arg(node, 6, "group")
            w, b = self._attr_args(node, 1, ("weight", "bias"))
        out = self._channel_norm(node, self._take(node, node.args[0]), path, NormKind.GROUP,
                                 groups, {"norm_weight": w, "norm_bias": b})
        return out if name == "group_norm" else _Multi(out, name)

    def _instance_norm_op(self, node: fx.Node, path: str):
        """``aten.instance_norm(input, weight, bias, running_mean, running_var, use_input_stats,
        momentum, eps, cudnn_enabled)``: per-sample statistics, or the running ones (a batch norm)."""
        w, b, mean, var = self._attr_args(node, 1, ("weight", "bias", "running_mean", "running_var"))
        params = {"norm_weight": w, "norm_bias": b}
        kind = NormKind.INSTANCE
        if not node_arg(node, 5, "use_input_stats", True):
            params.update(running_mean=mean, running_var=var)
            kind = NormKind.BATCH
        return self._channel_norm(node, self._take(node, node.args[0]), path, kind, 1, params)

    def _slice(self, node: fx.Node, path: str):
        """``aten.slice(x, dim, start, end, step)``: all positions, or a slice of the features."""
        if _is_param(self.env.get(node.args[0])):  # pos_embed[:, :T]: the table is read whole
            return _ParamView(*_param_of(self.env[node.args[0]]), self._shape(node))
        val = self._take(node, node.args[0])
        n = len(val.shape)
        dim = node_arg(node, 1, "dim", 0) % n
        start, end, step = (node_arg(node, 2, "start"), node_arg(node, 3, "end"),
                            node_arg(node, 4, "step", 1))
        size = val.shape[dim]
        index = torch.arange(size)[slice(start, end, step)]
        if val.feat is None or dim != self._fdim(val):
            if index.numel() != size:
                raise UnsupportedModuleError(path, "aten.slice", "it slices positions; only "
                                             "slices of the features are supported")
            return TracedValue(val.feat, self._shape(node), val.fdim)
        feat = self.b.select(self._feat(val, "channels"), index, path)
        return TracedValue(feat, self._shape(node), dim)

    def _batch_norm_op(self, node: fx.Node, path: str, name: str):
        val = self._take(node, node.args[0])
        if val.feat is not None and self._fdim(val) != 1:
            raise UnsupportedModuleError(path, f"aten.{name}", "its features are not in dim 1")
        slots = ("norm_weight", "norm_bias", "running_mean", "running_var")
        names = ("weight", "bias", "running_mean", "running_var")
        if node.target.overloadpacket.__name__ == "_native_batch_norm_legit" \
                and node.target._overloadname == "no_stats":
            slots, names = slots[:2], names[:2]
        params = {slot: p for slot, p in zip(slots, self._attr_args(node, 1, names)) if p is not None}
        feat = self.b.norm(self._feat(val, "channels"), NormKind.BATCH, params, path)
        out = self._result(node, feat, 1)
        return out if name == "batch_norm" else _Multi(out, name)

    def _product(self, node: fx.Node, path: str):
        x, c = node.args[:2]
        if isinstance(c, fx.Node) and not isinstance(x, fx.Node):
            x, c = c, x
        # Core ATen decomposes silu into x * sigmoid(x).
        for a, b in ((x, c), (c, x)):
            if isinstance(b, fx.Node) and op_name(b) in ("sigmoid", "sigmoid_") \
                    and b.args[0] is a and _silu_product(b, self.live) is node:
                val = self._take(node, a)
                if {u for u in a.users if u in self.live} == {b, node}:
                    val = self.env[a]  # both uses are this one activation
                return self._activation(node, val, Activation.SILU)
        # Sine(w0) exports as sin(x * w0): the scale is part of the activation, as it is when the
        # fx converter reads the Sine module.
        users = [u for u in node.users if u in self.live]
        if isinstance(c, (int, float)) and users and all(op_name(u) in ("sin", "sin_")
                                                         for u in users):
            return self._take(node, x)
        if isinstance(c, (int, float)) or isinstance(x, (int, float)):
            raise UnsupportedModuleError(path, "aten.mul", "a value times a constant is only "
                                         "supported feeding sin (a SIREN layer); fold the constant "
                                         "into the layer before it")
        return self._mul(node)  # a gate times its input, or a layer scale


def _silu_product(sigmoid: fx.Node, live: set[fx.Node]) -> fx.Node | None:
    """The ``mul(x, sigmoid(x))`` node when that is the sigmoid's only use, else None."""
    users = [u for u in sigmoid.users if u in live]
    if len(users) != 1 or op_name(users[0]) != "mul":
        return None
    x = sigmoid.args[0]
    return users[0] if set(users[0].args[:2]) == {x, sigmoid} else None


def _aliases(state: dict) -> dict[str, str]:
    """Each key of a tensor held under several keys (tied embeddings: ``lm_head.weight`` is
    ``wte.weight``) -> the next such key; the program reads all uses through one of them."""
    by_storage: dict[tuple, list[str]] = {}
    for key, t in state.items():
        if isinstance(t, Tensor) and t.numel():
            by_storage.setdefault((t.data_ptr(), tuple(t.shape), tuple(t.stride())), []).append(key)
    return {keys[i]: keys[(i + 1) % len(keys)] for keys in by_storage.values() if len(keys) > 1
            for i in range(len(keys))}


def state_dict_order(ep: torch.export.ExportedProgram) -> list[str]:
    """The keys of ``ep.state_dict`` in the order the original ``module.state_dict()`` had them.

    An exported program lists every parameter before every buffer; ``nn.Module.state_dict``
    walks the modules depth-first and gives each module's parameters, then its buffers, then its
    children. Both lists are in that depth-first module order, so the module tree (children in
    order of first appearance) gives back the original order. A child module that holds only
    buffers is placed after its siblings that hold parameters.
    """
    keys = list(ep.state_dict)
    present = set(keys)
    params = [k for k in ep.graph_signature.parameters if k in present]
    buffers = [k for k in ep.graph_signature.buffers if k in present]
    rest = [k for k in keys if k not in set(params) | set(buffers)]
    children: dict[str, list[str]] = {}
    own: dict[str, list[str]] = {}
    for key in params + buffers:
        parts = key.split(".")
        for i in range(len(parts) - 1):
            parent, child = ".".join(parts[:i]), ".".join(parts[: i + 1])
            siblings = children.setdefault(parent, [])
            if child not in siblings:
                siblings.append(child)
        own.setdefault(".".join(parts[:-1]), []).append(key)
    order: list[str] = []
    stack = [""]
    while stack:
        module = stack.pop()
        order.extend(own.get(module, ()))  # parameters first: they were added first
        stack.extend(reversed(children.get(module, [])))
    return order + rest


def _moved_dim(node: fx.Node, name: str, dim: int, ndim: int) -> int:
    """Where dimension ``dim`` of the input ends up after a transpose/permute node."""
    if name == "t":
        return 1 - dim if ndim == 2 else dim
    if name == "permute":
        dims = [d % ndim for d in node_arg(node, 1, "dims")]
        return dims.index(dim)
    a, b = (d % ndim for d in node.args[1:3])
    return b if dim == a else a if dim == b else dim


def _check_not_attention(node: fx.Node, path: str, name: str) -> None:
    stack = node.meta.get("nn_module_stack") or {}
    for sub_path, sub_type in stack.values():
        kind = str(sub_type).rsplit(".", 1)[-1]
        if str(sub_type).startswith("torch.nn.") and kind in _ATTENTION_MODULES:
            raise UnsupportedModuleError(sub_path, kind, "attention is not supported in "
                                         "torch.export programs; convert the live module with "
                                         "paramgraph.from_module (or the checkpoint with --arch)")
    if name in _ATTENTION_OPS:
        raise UnsupportedModuleError(path, f"aten.{name}", "attention is not supported in "
                                     "torch.export programs; convert the live module with "
                                     "paramgraph.from_module (or the checkpoint with --arch)")


def _ancestors(outputs: list[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def _root_type(ep: torch.export.ExportedProgram) -> str:
    for node in ep.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            path, kind = next(iter(stack.values()))
            if path == "":
                return str(kind).rsplit(".", 1)[-1] or "ExportedProgram"
    return "ExportedProgram"
