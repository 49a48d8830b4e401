"""``from_module``: read a live ``nn.Module`` by tracing it with ``torch.fx``.

The real data flow is seen, not guessed from parameter names: residual additions, flattens,
pooling, functional activations and modules nested to any depth. Supported layers are fx *leaves*
(their calls appear as single nodes); user-defined modules are traced through. A shape pass over
``example_input`` gives every intermediate shape, which decides how reshapes, flattens and
transposes move the feature dimension.
"""

from __future__ import annotations

import inspect
import math
import operator
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from . import patterns
from .patterns import op_name
from .builder import Feat, GraphBuilder
from .errors import UnsupportedModuleError
from .layout import SegmentTable
from .nn import Sine
from .types import Activation, NodeType, NormKind

if TYPE_CHECKING:  # for annotations only: the graph class imports torch_geometric
    from .graph import ParamGraph

SUPPORTED = (
    "Linear, Conv1d/Conv2d/Conv3d (grouped and depthwise too), BatchNorm1d/2d/3d (eval), "
    "LayerNorm over the features (channels-last or LayerNorm2d-style permutes), GroupNorm, "
    "InstanceNorm1d/2d/3d, ReLU, ReLU6, LeakyReLU, GELU (also tanh), SiLU, Mish, ELU/CELU/SELU, "
    "Softplus, Hardswish, Hardsigmoid, Hardtanh, Softsign, Tanh, Sigmoid, Sine, clamp, Identity, "
    "Dropout, stochastic depth / drop path (eval), Flatten, Avg/Max/AdaptiveAvg/AdaptiveMax "
    "pooling, MultiheadAttention (self-attention, packed in-projection), "
    "TransformerEncoderLayer/TransformerEncoder (batch_first), the functional forms of these, "
    "x + y, x * gate (squeeze-excitation), x * sigmoid(x), parameter * x (layer scale), "
    "torch.cat, chunk/split/slices on features, channel shuffle, reshapes, transposes, "
    "mean/amax over positions, branches side by side (torch.stack or a view into (branches, C)) "
    "with a softmax across them, their product with attention weights and their sum "
    "(selective kernel, split attention), a convolution along the channel axis of one pooled "
    "channel (ECA), F.pad of positions (zeros, reflect, replicate, circular), nn.Upsample and "
    "F.interpolate, and containers or custom modules built from them"
)

_ACT_MODULES = {
    nn.ReLU: Activation.RELU, nn.LeakyReLU: Activation.LEAKY_RELU, nn.GELU: Activation.GELU,
    nn.SiLU: Activation.SILU, nn.Tanh: Activation.TANH, nn.Sigmoid: Activation.SIGMOID,
    Sine: Activation.SIN, nn.ReLU6: Activation.RELU6, nn.Hardswish: Activation.HARDSWISH,
    nn.Hardsigmoid: Activation.HARDSIGMOID, nn.Mish: Activation.MISH, nn.ELU: Activation.ELU,
    nn.CELU: Activation.ELU, nn.SELU: Activation.ELU, nn.Softplus: Activation.SOFTPLUS,
    nn.Softsign: Activation.SOFTSIGN,
}
_ACT_FUNCTIONS = {
    torch.relu: Activation.RELU, F.relu: Activation.RELU, F.leaky_relu: Activation.LEAKY_RELU,
    F.silu: Activation.SILU, torch.tanh: Activation.TANH,
    F.tanh: Activation.TANH, torch.sigmoid: Activation.SIGMOID, F.sigmoid: Activation.SIGMOID,
    torch.sin: Activation.SIN, F.relu6: Activation.RELU6, F.hardswish: Activation.HARDSWISH,
    F.hardsigmoid: Activation.HARDSIGMOID, F.mish: Activation.MISH, F.elu: Activation.ELU,
    F.celu: Activation.ELU, F.selu: Activation.ELU, torch.selu: Activation.ELU,
    F.softplus: Activation.SOFTPLUS, F.softsign: Activation.SOFTSIGN, F.relu_: Activation.RELU,
    torch.relu_: Activation.RELU, F.elu_: Activation.ELU, F.leaky_relu_: Activation.LEAKY_RELU,
    torch.sigmoid_: Activation.SIGMOID, torch.tanh_: Activation.TANH,
}
_ACT_METHODS = {"relu": Activation.RELU, "tanh": Activation.TANH, "sigmoid": Activation.SIGMOID,
                "sin": Activation.SIN, "relu_": Activation.RELU, "tanh_": Activation.TANH,
                "sigmoid_": Activation.SIGMOID}
_TRANSPARENT_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                        nn.AlphaDropout, nn.FeatureAlphaDropout)
_TRANSPARENT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.clone,
                          F.alpha_dropout, F.feature_alpha_dropout}
# Functions that libraries register as fx leaves (``torch.fx.wrap``) and that are the identity in
# eval mode, where every network is traced: matched by name, so the library need not be imported.
_EVAL_IDENTITY_NAMES = {"stochastic_depth", "drop_path", "drop_block_2d", "drop_block_fast_2d"}
_TRANSPARENT_METHODS = {"contiguous", "clone", "float", "double", "half", "to", "type_as"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_POOL_MODULES = {
    nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.AdaptiveAvgPool1d: "avg",
    nn.AdaptiveAvgPool2d: "avg", nn.MaxPool1d: "max", nn.MaxPool2d: "max",
    nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max",
}
_POOL_FUNCTIONS = {
    F.avg_pool1d: "avg", F.avg_pool2d: "avg", F.adaptive_avg_pool1d: "avg",
    F.adaptive_avg_pool2d: "avg", F.max_pool1d: "max", F.max_pool2d: "max",
    F.adaptive_max_pool1d: "max", F.adaptive_max_pool2d: "max",
}
_REDUCE = {"mean": "avg", "sum": "avg", "amax": "max"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def from_module(module: nn.Module, example_input) -> ParamGraph:
    """Convert ``module`` into a :class:`ParamGraph` by tracing it on ``example_input``: one
    tensor, a tuple of positional inputs or a dict of keyword inputs (integer tensors are token
    ids for embeddings, or masks); forward arguments not given keep their defaults.

    Returns the graph; ``paramgraph.to_state_dict(graph)`` gives back ``module.state_dict()``
    bit-exactly (every converted parameter and buffer; counters like ``num_batches_tracked`` are
    not converted). The module is traced in eval mode and left in the mode it was in.

    The module is traced in eval mode (dropout and stochastic depth are the identity, batch norm
    uses its running statistics). When ``torch.fx`` cannot trace the forward (data-dependent
    Python, item assignment, asserts on values), the module is exported with ``torch.export`` on
    the same input, its in-place operations are functionalised, and that program is converted
    (:func:`paramgraph.from_exported`): either front end gives the same graph.

    Raises :class:`~paramgraph.UnsupportedModuleError` naming the submodule, its type, what is
    wrong and what to do, for layers or data flow the graph cannot represent, for a forward that
    neither front end can read, and for an example input the network does not accept (one line
    naming the layer and the shape mismatch).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module expects an nn.Module, got {type(module).__name__}")
    if _Tracer().is_leaf_module(module, "") and isinstance(example_input, Tensor):
        return _from_bare_layer(module, example_input)
    args, kwargs = _split_inputs(example_input)
    ordered, concrete = _bind(module, args, kwargs)
    was_training = module.training
    module.eval()
    try:
        try:
            gm = _trace(module, concrete)
        except UnsupportedModuleError as fx_error:
            return _export_fallback(module, (args, kwargs), fx_error)
        constants = _constant_nodes(module, gm)
        values = _propagate(module, gm, ordered, constants)
        converter = FxConverter(module, gm, {n: Const(v) if isinstance(v, Tensor) else None
                                             for n, v in values.items()})
        converter.literals = values
        return converter.run()
    finally:
        module.train(was_training)


def _split_inputs(example_input) -> tuple[tuple, dict]:
    """One tensor, a tuple/list (positional) or a dict (keyword inputs; int keys are positions,
    as :func:`paramgraph.inputs.make_inputs` gives them) as (args, kwargs)."""
    if isinstance(example_input, dict):
        args = tuple(example_input[i] for i in sorted(k for k in example_input
                                                      if isinstance(k, int)))
        return args, {k: v for k, v in example_input.items() if not isinstance(k, int)}
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    return (example_input,), {}


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> tuple[list, dict]:
    """The forward's inputs in parameter order (defaults where not given) and the parameters
    not given, fixed to their defaults for tracing (``attn_mask=None`` takes its None branch)."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names = [p.name for p in params]
    unknown = [k for k in kwargs if k not in names]
    if unknown or len(args) > len(params):
        what = f"keyword inputs {unknown}" if unknown else f"{len(args)} inputs"
        raise UnsupportedModuleError("", type(module).__name__, f"forward takes {names}, not "
                                     f"{what}; pass inputs that match its signature")
    ordered, concrete = [], {}
    for i, p in enumerate(params):
        if i < len(args):
            ordered.append(args[i])
        elif p.name in kwargs:
            ordered.append(kwargs[p.name])
        elif p.default is not p.empty:
            ordered.append(p.default)
            concrete[p.name] = p.default
        else:
            raise UnsupportedModuleError("", type(module).__name__, f"forward needs input "
                                         f"'{p.name}', which was not given; pass it (--input-spec "
                                         f"'...;{p.name}=SPEC')")
    return ordered, concrete


def _describe(inputs) -> str:
    shapes = [tuple(t.shape) for t in inputs if isinstance(t, Tensor)]
    return f"of shape {shapes[0]}" if len(shapes) == 1 else f"of shapes {shapes}"


def _constant_nodes(root: nn.Module, gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes computed from no input value and no state_dict tensor (only from shapes, constants
    and non-persistent buffers): sinusoidal positions, rotary cosines, ``arange`` positions."""
    state = set(root.state_dict(keep_vars=True))
    values: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" or (n.op == "get_attr" and n.target in state):
            values.add(n)
        elif n.op == "call_module":
            if any(True for _ in gm.get_submodule(n.target).parameters()) \
                    or any(a in values for a in n.all_input_nodes):
                values.add(n)
        elif not _shape_query(n) and any(a in values for a in n.all_input_nodes):
            values.add(n)
    return {n for n in gm.graph.nodes if n not in values
            and n.op in ("get_attr", "call_function", "call_method", "call_module")}


class _TensorMeta(NamedTuple):
    """The part of ``ShapeProp``'s ``TensorMetadata`` the converter reads."""

    shape: torch.Size
    dtype: torch.dtype


class _ShapePass(fx.Interpreter):
    """Runs the traced forward and records every node's ``tensor_meta`` (shape, dtype) as
    ``ShapeProp`` does, without its import of ``symbolic_shapes`` (sympy, ~1.5 s: most of a small
    conversion) and its memory-format checks. Remembers the node it is running, to name it when the
    forward fails, and keeps the values of the constant nodes."""

    current: fx.Node | None = None
    keep: set[fx.Node] = set()

    def run_node(self, n: fx.Node):
        self.current = n
        result = super().run_node(n)
        found = False

        def meta(obj):
            nonlocal found
            if isinstance(obj, Tensor):
                found = True
                return _TensorMeta(obj.shape, obj.dtype)
            return obj

        tensor_meta = fx.node.map_aggregate(result, meta)
        if found:
            n.meta["tensor_meta"] = tensor_meta
        n.meta["type"] = type(result)
        if n in self.keep:
            self.values[n] = result
        return result


def _propagate(module: nn.Module, gm: fx.GraphModule, inputs: list,
               constants: set[fx.Node] = frozenset()) -> dict[fx.Node, object]:
    """Run the traced forward on the example inputs to record every shape and the values of
    ``constants`` (returned); a failure (a wrong input shape, say) is one line naming the layer
    that failed and why."""
    interp = _ShapePass(gm)
    interp.keep, interp.values = constants, {}
    try:
        with torch.no_grad():
            interp.run(*inputs)
    except Exception as err:
        node, cause = interp.current, err.__cause__ or err
        path, what = "", type(module).__name__
        if node is not None:
            if node.op == "call_module":
                path = str(node.target)
                what = type(module.get_submodule(path)).__name__
            else:
                path = _stack_path(node)
                owner = module.get_submodule(path) if path else module
                what = f"{type(owner).__name__}: {_target_name(node.target)}"
        raise UnsupportedModuleError(path, what, f"the example input {_describe(inputs)} "
                                     f"does not fit: {_first_line(cause)}; pass an input of the "
                                     "shape the network expects (--input-shape; --input-spec "
                                     "for token ids or several inputs)") from err
    return interp.values


def _first_line(err: BaseException) -> str:
    """The part of another library's error that says what is wrong, on one line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    return text[:200] + ("..." if len(text) > 200 else "")


def _stack_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    return next(reversed(stack.values()))[0] if stack else ""


def _export_fallback(module: nn.Module, inputs: tuple[tuple, dict],
                     fx_error: UnsupportedModuleError) -> ParamGraph:
    """Convert ``module`` through ``torch.export`` when ``torch.fx`` could not trace it; if that
    fails too, the error says what each front end found."""
    from .export import from_exported

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(module, inputs[0], inputs[1])
    except Exception as err:
        raise UnsupportedModuleError(
            fx_error.path, fx_error.what, f"{fx_error.reason}; the torch.export fallback failed "
            f"too ({_first_line(err)}); rewrite the forward without data-dependent Python or "
            "convert an exported program (.pt2)") from err
    try:
        graph = from_exported(ep)
    except UnsupportedModuleError as err:
        raise UnsupportedModuleError(err.path, err.what, f"{err.reason} (read through the "
                                     f"torch.export fallback, since torch.fx could not trace "
                                     f"'{fx_error.path or type(module).__name__}')") from err
    return graph


class _Bare(nn.Module):
    """Holds a root module that is itself a torch.nn layer, so that it is traced as one call."""

    NAME = "layer"

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.self_attention = isinstance(layer, nn.MultiheadAttention)
        self.train(layer.training)

    def forward(self, x):
        return self.layer(x, x, x) if self.self_attention else self.layer(x)


def _from_bare_layer(module: nn.Module, example_input: Tensor) -> ParamGraph:
    """``from_module`` of a bare torch.nn layer (``nn.TransformerEncoderLayer(...)`` itself)."""
    prefix = _Bare.NAME + "."
    try:
        graph = from_module(_Bare(module), example_input)
    except UnsupportedModuleError as err:
        path = err.path.removeprefix(_Bare.NAME).removeprefix(".")
        what = type(module).__name__ if not path and err.what == "_Bare" else err.what
        raise UnsupportedModuleError(path, what, err.reason, err.supported) from err
    table = graph.segments
    graph.segments = SegmentTable(
        tuple(replace(s, name=s.name.removeprefix(prefix)) for s in table),
        tuple(k.removeprefix(prefix) for k in table.unplaced),
    )
    return graph


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _CONTAINERS):
            return False
        # Every torch.nn layer is a leaf: supported ones get a handler, the rest a clear error.
        return type(m).__module__.startswith("torch.nn") or isinstance(m, Sine)


def _trace(module: nn.Module, concrete: dict | None = None) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(module, concrete_args=concrete or None)
    except Exception as err:
        path = next(reversed(tracer.module_stack), "") if getattr(tracer, "module_stack", None) else ""
        sub = module.get_submodule(path) if path else module
        raise UnsupportedModuleError(
            path, type(sub).__name__, f"its forward cannot be traced by torch.fx "
            f"({_first_line(err)})") from err
    return fx.GraphModule(module, graph)


@dataclass
class TracedValue:
    """A traced tensor: its neurons, its shape and which dimension carries the neurons.

    The value every front end keeps per activation node (:class:`FxConverter` and the
    ``torch.export`` reader in :mod:`paramgraph.export`).
    """

    feat: Feat | None  # None: the network input, before its layout is known
    shape: tuple[int, ...]
    fdim: int
    # The features span dimensions fdim .. fdim + len(split) - 1 of these sizes (a channel
    # shuffle's view); feat.nodes are in the row-major order of those dimensions.
    split: tuple[int, ...] | None = None
    # The features are one attention head, split off by a view to [batch, positions, 1, d] (a
    # multi-query key/value projection): a rotary embedding on it is read as attention heads
    # (paramgraph.attention.reads_heads), as on several heads.
    head: bool = False


class _Pieces:
    """The tuple that ``chunk``/``split`` along the features returns; indexing picks a piece."""

    def __init__(self, pieces: list[TracedValue]):
        self.pieces = pieces


@dataclass(frozen=True)
class _ParamView:
    """A parameter read through a reshape (``gamma.view(1, -1, 1, 1)``): the state_dict tensor
    and the shape the forward uses."""

    name: str
    tensor: Tensor
    shape: tuple[int, ...]


class _SiluHalf:
    """``sigmoid(x)`` whose only use is ``x * sigmoid(x)``: the product is SiLU of x."""

    def __init__(self, arg: fx.Node):
        self.arg = arg


class _AttentionOutput:
    def __init__(self, value: TracedValue):
        self.value = value


@dataclass
class Const:
    """A tensor computed in forward from shapes and constants only (sinusoidal positions,
    rotary cosines, ``arange`` positions): part of the function, not of the weights."""

    value: Tensor


@dataclass
class Data:
    """A tensor computed from the inputs without weights: token ids (``tokens``), masks. It
    carries no neurons; embeddings read token ids, attention scores take masks."""

    shape: tuple[int, ...]
    tokens: bool = False


class FxConverter:
    """Walks a traced ``torch.fx`` graph node by node and calls :class:`GraphBuilder` per layer.

    Holds the handling of values shared by both front ends (reshapes, transposes, pooling,
    reductions, residual additions, concatenation, indexing, weight layers); the
    ``torch.export`` reader (:mod:`paramgraph.export`) subclasses it and maps ATen operators onto
    these methods. Nodes are dispatched through the tables at the end of this module.
    """

    def __init__(self, root: nn.Module, gm: fx.GraphModule, constants: dict | None = None):
        self.root = root
        self.gm = gm
        self.b = GraphBuilder()
        self.env: dict[fx.Node, object] = {}
        self.called: set[str] = set()
        self.modules = dict(root.named_modules())
        self.constants: dict[fx.Node, Const | None] = constants or {}
        self.literals: dict[fx.Node, object] = {}  # values of constant nodes (sizes too)

    # -- driver ----------------------------------------------------------------------------------

    def run(self) -> ParamGraph:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.fused, self.skip = patterns.find(self.gm.graph, lambda n: n.op == "get_attr")
        for node in self.gm.graph.nodes:
            self.env[node] = self._convert(node, placeholders)
        placed = {s.name for s in self.b.segments}
        keys = list(self.root.state_dict())
        unplaced = tuple(k for k in keys if k not in placed
                         and not k.endswith("num_batches_tracked"))
        if unplaced:
            warnings.warn(f"{len(unplaced)} state_dict entries are not used by the traced forward "
                          f"and are not in the graph: {', '.join(unplaced[:5])}", stacklevel=3)
        return self.b.finalize(unplaced, order=keys)

    def _convert(self, node: fx.Node, placeholders):
        if node in self.constants:
            return self.constants[node]
        if node in self.skip or node in self.fused:
            return self._written_out(node)
        if node.op == "placeholder":
            return self._input(node, node.meta.get("tensor_meta"))
        if node.op == "get_attr":
            return (node.target, _fetch_attr(self.root, node.target))
        if node.op == "call_module":
            return self._call_module(node)
        if node.op in ("call_function", "call_method"):
            return self._call(node)
        if node.op == "output":
            self._output(node.args[0])
            return None
        raise UnsupportedModuleError(self._path(node), node.op, "unknown fx operation")

    def _input(self, node: fx.Node, meta) -> TracedValue | Data | None:
        """A forward input: float features (their layout is fixed by the first layer that reads
        them), integer token ids or masks (:class:`Data`), or a non-tensor default (None)."""
        dtype = getattr(meta, "dtype", None)
        if not node.users or dtype is None:
            return None
        if not dtype.is_floating_point:
            return Data(self._shape(node), tokens=True)
        return TracedValue(None, self._shape(node), -1)

    def _output(self, out):
        if isinstance(out, (tuple, list)):
            for item in out:
                self._output(item)
            return
        val = self.env[out]
        if isinstance(val, _AttentionOutput):
            val = val.value
        if not isinstance(val, TracedValue):
            raise UnsupportedModuleError("", type(self.root).__name__, "the output is not a tensor")
        self.b.output(self._feat(val, "channels"))

    # -- values ----------------------------------------------------------------------------------

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    def _owner(self, path: str, op: str) -> str:
        """``"<type of the module at path>: <op>"``, to name both in an error."""
        module = self.modules.get(path, self.root)
        return f"{type(module).__name__}: {op}"

    def _path(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack")
        return next(reversed(stack.values()))[0] if stack else ""

    def _take(self, node: fx.Node, arg) -> TracedValue:
        """The value of a tensor argument; not exclusive if anything else also reads it."""
        if not isinstance(arg, fx.Node):
            raise UnsupportedModuleError(self._path(node), str(node.target),
                                         f"expected a tensor argument, got {arg!r}")
        val = self.env[arg]
        if isinstance(val, _AttentionOutput):
            raise UnsupportedModuleError(self._path(node), str(node.target),
                                         "uses an attention module's output tuple directly")
        if not isinstance(val, TracedValue):
            raise UnsupportedModuleError(self._path(node), str(node.target),
                                         f"argument '{arg.name}' is not a traced activation")
        if val.feat is not None and sum(not _shape_query(u) for u in arg.users) > 1:
            val = replace(val, feat=replace(val.feat, exclusive=False))
        return val

    def _feat(self, val: TracedValue, layout: str) -> Feat:
        """The neurons of ``val``; fixes the input's layout on first use (channels or last dim)."""
        if val.split is not None:
            raise UnsupportedModuleError("", "view", f"the features are split into dimensions "
                                         f"{val.split}; only a channel shuffle (view, transpose, "
                                         "view back) is supported")
        if val.feat is None:
            fdim = len(val.shape) - 1 if layout == "last" or len(val.shape) <= 2 else 1
            val.feat, val.fdim = self.b.input(val.shape[fdim]), fdim
        return val.feat

    def _fdim(self, val: TracedValue) -> int:
        return val.fdim % len(val.shape)

    def _result(self, node: fx.Node, feat: Feat, fdim: int | None = None) -> TracedValue:
        shape = self._shape(node)
        return TracedValue(feat, shape, len(shape) - 1 if fdim is None else fdim)

    # -- modules ---------------------------------------------------------------------------------

    def _call_module(self, node: fx.Node):
        path = str(node.target)
        m = self.gm.get_submodule(path)
        if any(True for _ in m.parameters(recurse=False)) or isinstance(m, nn.MultiheadAttention):
            if path in self.called:
                raise UnsupportedModuleError(path, type(m).__name__, "it is called more than "
                                             "once; shared weights cannot be represented: give "
                                             "each use its own layer")
            self.called.add(path)
        handler = _module_handler(type(m))
        if handler is None:
            raise UnsupportedModuleError(path, type(m).__name__, "this layer type is not "
                                         "supported; replace it by a supported layer (paramgraph "
                                         "inspect --supported lists them)")
        return handler(self, node, path, m)

    def _param(self, path: str, name: str, tensor):
        if tensor is None:
            return None
        return (f"{path}.{name}" if path else name, tensor)

    def _linear(self, node, val: TracedValue, path, weight, bias) -> TracedValue:
        if self._fdim(val) != len(val.shape) - 1 and val.feat is not None:
            raise UnsupportedModuleError(path, "Linear", "it is applied along a dimension that does "
                                         "not carry the features (e.g. along a conv's width)")
        feat = self.b.linear(self._feat(val, "last"), weight, bias, path)
        return self._result(node, feat)

    def _conv(self, node, val: TracedValue, path, weight, bias, groups: int = 1) -> TracedValue:
        if val.feat is not None and self._fdim(val) != 1:
            if not _one_channel_along_features(val):
                raise UnsupportedModuleError(path, "convolution", "its input's channels are not "
                                             "in dimension 1; a convolution along the features "
                                             "is supported over one channel whose only "
                                             "non-trivial dimension they are (ECA attention: "
                                             "y.view(B, 1, C))")
            # ECA: the features are the positions of the conv's single input channel
            feat = self.b.channel_conv(val.feat, weight, bias, path, groups)
            return self._result(node, feat, 1)
        feat = self.b.conv(self._feat(val, "channels"), weight, bias, path, groups)
        return self._result(node, feat, 1)

    def _channel_norm(self, node, val: TracedValue, path, kind: NormKind, groups: int,
                      params: dict) -> TracedValue:
        """GroupNorm / InstanceNorm over the channels (dimension 1)."""
        if val.feat is not None and self._fdim(val) != 1:
            raise UnsupportedModuleError(path, kind.name.lower() + " norm", "its channels are not "
                                         "in dimension 1")
        feat = self._feat(val, "channels")
        if groups < 1 or feat.size % groups:
            raise UnsupportedModuleError(path, "GroupNorm", f"{feat.size} channels do not split "
                                         f"into {groups} groups")
        params = {k: v for k, v in params.items() if v is not None}
        return self._result(node, self.b.norm(feat, kind, params, path, groups), 1)

    def _batch_norm(self, node, val: TracedValue, path, m) -> TracedValue:
        if val.feat is not None and self._fdim(val) != 1:
            raise UnsupportedModuleError(path, type(m).__name__, "its features are not in dim 1")
        params = {}
        for slot, attr in (("norm_weight", "weight"), ("norm_bias", "bias"),
                           ("running_mean", "running_mean"), ("running_var", "running_var")):
            p = self._param(path, attr, getattr(m, attr))
            if p is not None:
                params[slot] = p
        feat = self.b.norm(self._feat(val, "channels"), NormKind.BATCH, params, path)
        return self._result(node, feat, 1)

    def _layer_norm(self, node, val: TracedValue, path, shape, weight, bias) -> TracedValue:
        feat = self._feat(val, "last")
        self._check_ln(path, shape, feat, val)
        params = {k: v for k, v in (("norm_weight", weight), ("norm_bias", bias)) if v is not None}
        return self._result(node, self.b.norm(feat, NormKind.LAYER, params, path))

    def _check_ln(self, path, shape, feat: Feat, val: TracedValue):
        if tuple(shape) != (feat.size,) or self._fdim(val) != len(val.shape) - 1:
            raise UnsupportedModuleError(path, "LayerNorm", f"normalized_shape {tuple(shape)} is "
                                         f"not the {feat.size} features of the last dimension")

    def _ln_feat(self, path, m: nn.LayerNorm, feat: Feat, val: TracedValue) -> Feat:
        self._check_ln(path, m.normalized_shape, feat, val)
        params = {k: v for k, v in (("norm_weight", self._param(path, "weight", m.weight)),
                                    ("norm_bias", self._param(path, "bias", m.bias))) if v is not None}
        return self.b.norm(feat, NormKind.LAYER, params, path)

    def _written_out(self, node: fx.Node):
        """A layer written out in tensor operations (:mod:`paramgraph.patterns`): at its last
        node, the layer of its input; its inner nodes carry nothing."""
        f = self.fused.get(node)
        if f is None:
            return None
        val = self._take(node, f.x)
        if patterns.uses(f.x) <= self.skip | {node}:  # read by the pattern alone
            val = self.env[f.x]
        if f.kind == "gelu_tanh":
            return self._activation(node, val, Activation.GELU_TANH)
        weight = None if f.weight is None else _param_of(self.env[f.weight])
        return self._rms_norm(node, val, self._path(node), (val.shape[-1],), weight)

    def _activation(self, node, val: TracedValue, act: Activation) -> TracedValue:
        feat = self._feat(val, "channels")
        return TracedValue(self.b.activation(feat, act), val.shape, val.fdim)

    def _pool(self, node, val: TracedValue, how: str) -> TracedValue:
        if val.feat is not None and self._fdim(val) != 1:
            raise UnsupportedModuleError(self._path(node), "pooling", "features not in dim 1")
        feat = self._feat(val, "channels")
        return self._result(node, self.b.pool(feat, how), 1)

    def _no_masks(self, node, path, m, skip):
        extra = list(node.args[skip:]) + [v for k, v in node.kwargs.items()
                                          if k not in ("need_weights", "average_attn_weights",
                                                       "is_causal")]
        if any(a is not None for a in extra):
            raise UnsupportedModuleError(path, type(m).__name__, "attention masks are not supported")

    # -- attention -------------------------------------------------------------------------------

    def _mha_call(self, node, path, m: nn.MultiheadAttention):
        q, k, v = (node.args + (None, None, None))[:3]
        k = node.kwargs.get("key", k)
        v = node.kwargs.get("value", v)
        if not (q is k is v):
            raise UnsupportedModuleError(path, "MultiheadAttention", "only self-attention "
                                         "(query, key and value the same tensor) is supported")
        val = self._take(node, q)
        self._no_masks(node, path, m, skip=3)
        feat = self._mha(path, m, self._feat(val, "last"))
        return _AttentionOutput(TracedValue(feat, val.shape, -1))  # same shape as the input

    def _mha(self, path: str, m: nn.MultiheadAttention, feat: Feat) -> Feat:
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise UnsupportedModuleError(path, "MultiheadAttention", "separate q/k/v projections, "
                                         "bias_k/bias_v and add_zero_attn are not supported")
        return self.b.attention(
            feat, m.num_heads, self._param(path, "in_proj_weight", m.in_proj_weight),
            self._param(path, "in_proj_bias", m.in_proj_bias),
            self._param(path, "out_proj.weight", m.out_proj.weight),
            self._param(path, "out_proj.bias", m.out_proj.bias), path,
        )

    def _encoder_layer(self, path: str, m: nn.TransformerEncoderLayer, x: Feat, val: TracedValue) -> Feat:
        act = _encoder_activation(path, m)
        shared = replace(x, exclusive=False)  # x feeds both the residual and the branch

        def attention(f: Feat) -> Feat:
            return self._mha(f"{path}.self_attn", m.self_attn, f)

        def feed_forward(f: Feat) -> Feat:
            h = self.b.linear(f, self._param(f"{path}.linear1", "weight", m.linear1.weight),
                              self._param(f"{path}.linear1", "bias", m.linear1.bias), path)
            h = self.b.activation(h, act)
            return self.b.linear(h, self._param(f"{path}.linear2", "weight", m.linear2.weight),
                                 self._param(f"{path}.linear2", "bias", m.linear2.bias), path)

        def norm(name: str, f: Feat) -> Feat:
            return self._ln_feat(f"{path}.{name}", getattr(m, name), f, val)

        if m.norm_first:
            x = self.b.add(shared, attention(norm("norm1", shared)), path)
            shared = replace(x, exclusive=False)
            return self.b.add(shared, feed_forward(norm("norm2", shared)), path)
        x = norm("norm1", self.b.add(shared, attention(shared), path))
        shared = replace(x, exclusive=False)
        return norm("norm2", self.b.add(shared, feed_forward(shared), path))

    # -- functions and methods -------------------------------------------------------------------

    def _call(self, node: fx.Node):
        from . import attention

        branch = _branch_op(self, node)  # before attention, which reads split features as heads
        if branch is not None:
            return branch(self, node, self._path(node))
        if attention.reads_heads(self, node):
            return attention.call(self, node, op_name(node))
        data = data_of(self, node, op_name(node))
        if data is not None:
            return data  # masks and positions computed from the inputs
        table = _METHOD_HANDLERS if node.op == "call_method" else _FUNCTION_HANDLERS
        handler = table.get(node.target)
        if handler is None and node.op == "call_function" \
                and _target_name(node.target) in _EVAL_IDENTITY_NAMES:
            handler = _on_input(_passthrough)  # stochastic depth / drop path: identity in eval
        return (handler or _unsupported_call)(self, node, self._path(node))

    def _attr_args(self, node, first: int, names):
        out = []
        for i, name in enumerate(names):
            arg = node_arg(node, first + i, name)
            if arg is None:
                out.append(None)
                continue
            val = self.env.get(arg) if isinstance(arg, fx.Node) else None
            if not (isinstance(val, tuple) and len(val) == 2 and isinstance(val[1], Tensor)):
                raise UnsupportedModuleError(self._path(node), str(node.target), f"its {name} is "
                                             "not a parameter of the module")
            out.append(val)
        return out

    def _getitem(self, node: fx.Node):
        src, index = node.args
        val = self.env[src]
        if isinstance(val, _AttentionOutput):
            if index == 0:
                return val.value
            if node.users:
                raise UnsupportedModuleError(self._path(node), "MultiheadAttention",
                                             "its attention weights are used; only its output is supported")
            return None
        if isinstance(val, _Pieces):
            return val.pieces[index]
        if _is_param(val):  # pos_embed[:, :T]: the table is read whole (unused rows too)
            name, tensor = _param_of(val)
            return _ParamView(name, tensor, self._shape(node))
        if not isinstance(val, TracedValue):
            return None  # indexing a shape tuple
        val = self._take(node, src)
        fdim = self._fdim(val)
        items = index if isinstance(index, tuple) else (index,)
        if any(i is None for i in items) and len(val.shape) >= 3 and val.feat is not None:
            from . import attention  # a new axis on a single key/value head (repeat_kv)

            return attention.call(self, node, "getitem")
        if any(i is Ellipsis or i is None or isinstance(i, (fx.Node, Tensor)) for i in items):
            raise UnsupportedModuleError(self._path(node), "indexing", f"index {index!r} is not "
                                         "supported (use plain ints and slices)")
        feat = self._feat(val, "last")
        if len(items) > fdim and items[fdim] != slice(None):
            if not isinstance(items[fdim], slice):
                raise UnsupportedModuleError(self._path(node), "indexing", "it selects a single "
                                             "feature; slices of the features are supported")
            index = torch.arange(feat.size)[items[fdim]]
            feat = self.b.select(feat, index, self._path(node))
        dropped = sum(isinstance(i, int) for i in items[:fdim])
        return TracedValue(feat, self._shape(node), fdim - dropped)

    def _split(self, node: fx.Node, name: str | None = None) -> _Pieces:
        """``chunk``/``split`` along the features: one piece per part."""
        val = self._take(node, node.args[0])
        name = name or _target_name(node.target)
        n = len(val.shape)
        dim = node_arg(node, 2, "dim", 0) % n
        if val.feat is not None and dim != self._fdim(val):
            raise UnsupportedModuleError(self._path(node), name, "it splits along a dimension "
                                         "that does not carry the features")
        feat = self._feat(val, "channels")
        size = feat.size
        how = node_arg(node, 1, "chunks" if name == "chunk" else "split_size_or_sections")
        how = self.literals.get(how, how) if isinstance(how, fx.Node) else how
        sizes = split_sizes(name, how, size)
        pieces, start = [], 0
        for k in sizes:
            part = self.b.select(feat, torch.arange(start, start + k), self._path(node))
            shape = list(val.shape)
            shape[dim] = k
            pieces.append(TracedValue(part, tuple(shape), dim))
            start += k
        return _Pieces(pieces)

    def _mul(self, node: fx.Node):
        """``a * b``: SiLU written as ``x * sigmoid(x)``, a gate times its input (PRODUCT neurons),
        or a per-channel parameter times a value (layer scale, a node value)."""
        a, b = node.args[:2]
        path = self._path(node)
        va = self.env.get(a) if isinstance(a, fx.Node) else a
        vb = self.env.get(b) if isinstance(b, fx.Node) else b
        for x, half in ((a, vb), (b, va)):
            if isinstance(half, _SiluHalf) and half.arg is x:
                sig = b if half is vb else a
                val = self.env[x] if set(x.users) <= {sig, node} else self._take(node, x)
                return self._activation(node, val, Activation.SILU)
        if isinstance(vb, (tuple, _ParamView)) and not isinstance(va, (tuple, _ParamView)):
            a, b, va, vb = b, a, vb, va
        if isinstance(va, (tuple, _ParamView)) and isinstance(vb, TracedValue):
            return self._layer_scale(node, va, self._take(node, b))
        if not any(isinstance(v, (TracedValue, tuple, _ParamView, _Pieces)) for v in (va, vb)):
            return None  # arithmetic on sizes
        if isinstance(va, TracedValue) and isinstance(vb, TracedValue):
            xa, xb = self._take(node, a), self._take(node, b)
            na, nb = len(xa.shape), len(xb.shape)
            fa = self._fdim(xa) - na if xa.feat is not None else None
            fb = self._fdim(xb) - nb if xb.feat is not None else None
            fd = fa if fa is not None else fb
            if fd is None or (fa is not None and fb is not None and fa != fb):
                raise UnsupportedModuleError(path, "mul", f"operands of shapes {xa.shape} and "
                                             f"{xb.shape} do not carry their features in the "
                                             "same dimension")
            layout = "last" if fd == -1 else "channels"
            fx_a, fx_b = self._feat(xa, layout), self._feat(xb, layout)
            out = self._shape(node)
            return TracedValue(self.b.product(fx_a, fx_b, path), out, len(out) + fd)
        rotary = any(isinstance(v, TracedValue) and len(v.shape) == 4 for v in (va, vb)) and \
            any(isinstance(v, Const) and v.value.dim() >= 2 for v in (va, vb))
        raise UnsupportedModuleError(path, self._owner(path, f"{node.op} "
                                                       f"{_target_name(node.target)}"),
                                     "a constant times a single attention head that was not "
                                     "split off as one (a rotary embedding?); split the head "
                                     "with view(batch, positions, 1, d) (then transpose), as "
                                     "multi-query attention does" if rotary else
                                     "a value times a constant is not supported; fold the "
                                     "constant into the layer before it")

    def _layer_scale(self, node: fx.Node, param, val: TracedValue) -> TracedValue:
        name, tensor = (param.name, param.tensor) if isinstance(param, _ParamView) else param
        shape = param.shape if isinstance(param, _ParamView) else tuple(tensor.shape)
        feat = self._feat(val, "channels")
        n, fdim = len(val.shape), self._fdim(val)
        padded = (1,) * (n - len(shape)) + tuple(shape)
        if len(padded) != n or any(k != 1 for i, k in enumerate(padded) if i != fdim) \
                or padded[fdim] != feat.size:
            raise UnsupportedModuleError(self._path(node), "mul", f"parameter '{name}' of shape "
                                         f"{tuple(shape)} does not scale the {feat.size} features "
                                         f"of a value of shape {val.shape} one by one")
        out = self.b.norm(feat, NormKind.SCALE, {"norm_weight": (name, tensor)}, self._path(node))
        return TracedValue(out, self._shape(node), fdim)

    def _reshape(self, node: fx.Node, val: TracedValue) -> TracedValue:
        out = self._shape(node)
        if val.feat is None:  # reshaping the raw input: its layout is decided by what reads it
            return TracedValue(None, out, -1)
        fdim, shape = self._fdim(val), val.shape
        pre = math.prod(shape[:fdim])
        if val.split is not None:  # the end of a channel shuffle: merge the split dimensions
            k = len(val.split)
            for j, n in enumerate(out):
                if math.prod(out[:j]) == pre and n == math.prod(val.split) \
                        and tuple(out[j + 1:]) == tuple(shape[fdim + k:]):
                    return TracedValue(val.feat, out, j)
            raise UnsupportedModuleError(self._path(node), f"reshape {shape} -> {out}", "the "
                                         "split feature dimensions are not merged back")
        pre, size = math.prod(shape[:fdim]), shape[fdim]
        cum = [math.prod(out[:j]) for j in range(len(out))]
        for j, n in enumerate(out):
            # the feature dimension survives untouched; one feature is told from a batch of one
            # by the leading dimensions (ECA's gate: (1, 1, C) -> (1, C, 1, 1) is a flatten)
            if cum[j] == pre and n == size and (size > 1 or tuple(out[:j]) == shape[:fdim]):
                from . import attention

                return TracedValue(val.feat, out, j,
                                   head=attention.splits_one_head(shape, fdim, out))
        for j in range(len(out) - 1):  # the start of a channel shuffle: (C) -> (groups, C/groups)
            if cum[j] == pre and out[j] > 1 and out[j + 1] > 1 and out[j] * out[j + 1] == size \
                    and tuple(out[j + 2:]) == tuple(shape[fdim + 1:]):
                return TracedValue(val.feat, out, j, split=(out[j], out[j + 1]))
        for j, n in enumerate(out):
            if cum[j] == pre and n == size * math.prod(shape[fdim + 1:]):  # (C, *pos) -> C*pos
                return TracedValue(self.b.flatten(val.feat, n // size, True), out, j)
            for i in range(1, fdim):
                if cum[j] == math.prod(shape[:i]) and n == math.prod(shape[i : fdim + 1]):
                    return TracedValue(self.b.flatten(val.feat, n // size, False), out, j)  # (pos, C)
        run = _pooled_split(shape, fdim, out)
        if run is not None:  # a pooled vector viewed as (cardinality, radix, C / cardinality)
            return TracedValue(val.feat, out, fdim, split=run)
        from . import attention  # features split into heads (and q/k/v): a head view

        return attention.reshape(self, node, val, out)

    def _transpose(self, node: fx.Node, val: TracedValue) -> TracedValue:
        if val.feat is None:
            return TracedValue(None, self._shape(node), -1)
        n, fdim, t = len(val.shape), self._fdim(val), node.target
        if val.split is not None:
            dims = node.args[1:3] if t in ("transpose", torch.transpose) else None
            return self._swap_split(node, val, dims)
        if t in ("transpose", torch.transpose):
            a, b = (d % n for d in node.args[1:3])
            new = b if fdim == a else a if fdim == b else fdim
        elif t == "t":
            new = 1 - fdim
        else:
            dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) \
                else node.args[1:]
            new = [d % n for d in dims].index(fdim)
        return TracedValue(val.feat, self._shape(node), new)

    def _swap_split(self, node: fx.Node, val: TracedValue, dims) -> TracedValue:
        """A transpose of two split feature dimensions (a channel shuffle's, or split attention's
        (cardinality, radix) swap), which reorders the channels (a fixed permutation; no
        neurons are added)."""
        n, fdim, k = len(val.shape), self._fdim(val), len(val.split)
        axes = sorted(d % n - fdim for d in dims) if dims is not None else None
        if axes is None or axes[0] < 0 or axes[1] >= k:
            raise UnsupportedModuleError(self._path(node), "transpose", "only a swap of two "
                                         "split feature dimensions (a channel shuffle) is "
                                         "supported")
        order = list(range(k))
        order[axes[0]], order[axes[1]] = axes[1], axes[0]
        return self._permute_split(node, val, order)

    def _permute_split(self, node: fx.Node, val: TracedValue, order: list[int]) -> TracedValue:
        """The split feature dimensions in the order ``order`` (a permutation of them; the
        other dimensions stay): the channels are read in that order."""
        index = torch.arange(val.feat.size).view(val.split).permute(order).reshape(-1)
        return TracedValue(self.b.select(val.feat, index, self._path(node)), self._shape(node),
                           self._fdim(val), split=tuple(val.split[i] for i in order))

    def _reduce(self, node: fx.Node, how: str) -> TracedValue:
        val = self._take(node, node.args[0])
        dims = node_arg(node, 1, "dim")
        feat = self._feat(val, "channels")
        fdim, n = self._fdim(val), len(val.shape)
        if dims is None:
            raise UnsupportedModuleError(self._path(node), str(node.target), "reduces over the "
                                         "features (no dim given)")
        dims = [d % n for d in (dims if isinstance(dims, (tuple, list)) else (dims,))]
        if fdim in dims:
            raise UnsupportedModuleError(self._path(node), str(node.target), "reduces over the "
                                         "features")
        keep = node_arg(node, 2, "keepdim", False)
        new = fdim if keep else fdim - sum(d < fdim for d in dims)
        return TracedValue(self.b.pool(feat, how), self._shape(node), new)

    def _add(self, node: fx.Node) -> TracedValue:
        a, b = node.args[:2]
        va, vb = (self.env.get(x) if isinstance(x, fx.Node) else x for x in (a, b))
        if isinstance(vb, TracedValue) and not isinstance(va, TracedValue):
            a, b, va, vb = b, a, vb, va
        if isinstance(va, TracedValue) and (_is_param(vb) or isinstance(vb, Const)) \
                and node_arg(node, 2, "alpha", 1) == 1:
            return self._add_table(node, self._take(node, a), vb)
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or node_arg(node, 2, "alpha", 1) != 1:
            raise UnsupportedModuleError(self._path(node), "add", "only the sum of two traced "
                                         "activations is supported (no constants or parameters)")
        va, vb = self._take(node, a), self._take(node, b)
        if _broadcast_features(va, vb):  # wte(idx) [B, T, d] + wpe(pos) [T, d]
            feat = self.b.add(self._feat(va, "last"), self._feat(vb, "last"), self._path(node))
            return self._result(node, feat)
        if va.shape != vb.shape or self._fdim(va) != self._fdim(vb):
            raise UnsupportedModuleError(self._path(node), "add", f"operand shapes {va.shape} and "
                                         f"{vb.shape} differ; broadcasting is not supported")
        layout = "last" if self._fdim(va) == len(va.shape) - 1 else "channels"
        feat = self.b.add(self._feat(va, layout), self._feat(vb, layout), self._path(node))
        fdim = va.fdim if va.feat is not None else vb.fdim
        return TracedValue(feat, self._shape(node), fdim)

    def _add_table(self, node: fx.Node, val: TracedValue, addend) -> TracedValue:
        """``x + pos_embed`` (a learned table over positions: POSITION nodes, EMBED edges), ``x +
        bias`` (bias-only neurons) or ``x + constant`` (sinusoidal positions: CONSTANT nodes,
        which pin the features), all joined to ``x`` as a residual addition."""
        path = self._path(node)
        if self._fdim(val) != len(val.shape) - 1 and val.feat is not None:
            raise UnsupportedModuleError(path, "add", "a table is added to features that are not "
                                         "in the last dimension")
        feat = self._feat(val, "last")
        if isinstance(addend, Const):
            if addend.value.shape[-1:] not in ((feat.size,), (1,)):
                raise UnsupportedModuleError(path, "add", f"a constant of shape "
                                             f"{tuple(addend.value.shape)} is added to "
                                             f"{feat.size} features")
            other = self.b.constant(feat.size)
        else:
            name, tensor = _param_of(addend)
            if tensor.shape[-1:] != (feat.size,):
                raise UnsupportedModuleError(path, "add", f"parameter '{name}' of shape "
                                             f"{tuple(tensor.shape)} is added to {feat.size} "
                                             "features (the last dimension)")
            rows = math.prod(tensor.shape[:-1])
            other = self.b.token((name, tensor), path) if rows == 1 else \
                self.b.embedding((name, tensor), NodeType.POSITION, path)
        return self._result(node, self.b.add(feat, other, path))

    def _embed(self, node: fx.Node, index, table: tuple[str, Tensor], path: str) -> TracedValue:
        """An embedding lookup: token ids (an integer input) read TOKEN nodes, a constant index
        (``arange`` positions) POSITION nodes."""
        if isinstance(index, Data) and index.tokens:
            source = NodeType.TOKEN
        elif isinstance(index, Const) and not index.value.is_floating_point():
            source = NodeType.POSITION
        else:
            raise UnsupportedModuleError(path, self._owner(path, "embedding"), "its indices are "
                                         "neither an integer input (token ids) nor computed from "
                                         "shapes alone (positions); pass token ids as an integer "
                                         "input (--input-spec int64:...)")
        return self._result(node, self.b.embedding(table, source, path))

    def _rms_norm(self, node, val: TracedValue, path, shape, weight) -> TracedValue:
        feat = self._feat(val, "last")
        self._check_ln(path, shape, feat, val)
        params = {"norm_weight": weight} if weight is not None else {}
        return self._result(node, self.b.norm(feat, NormKind.RMS, params, path))

    def _cat(self, node: fx.Node) -> TracedValue:
        dim = node_arg(node, 1, "dim", 0)
        if any(_is_param(self.env.get(a)) for a in node.args[0]):
            return self._cat_positions(node, dim)
        parts = [self._take(node, a) for a in node.args[0]]
        if parts[0].feat is not None and dim % len(parts[0].shape) != self._fdim(parts[0]):
            return self._cat_positions(node, dim)
        fdim = self._fdim(parts[0])
        if dim % len(parts[0].shape) != fdim or any(self._fdim(p) != fdim for p in parts):
            raise UnsupportedModuleError(self._path(node), "cat", "only concatenation along the "
                                         "feature dimension is supported")
        feat = self.b.concat([self._feat(p, "channels") for p in parts], self._path(node))
        return TracedValue(feat, self._shape(node), fdim)

    def _cat_positions(self, node: fx.Node, dim: int) -> TracedValue:
        """``cat([cls_token, x], dim=1)``: learned tokens (bias-only neurons) and values joined
        along positions, each feature one SEQUENCE neuron."""
        path = self._path(node)
        vals = [self.env.get(a) for a in node.args[0]]
        traced = [v for v in vals if isinstance(v, TracedValue) and v.feat is not None]
        if not traced:
            raise UnsupportedModuleError(path, "cat", "only learned tokens joined to a value "
                                         "with neurons are supported")
        n, fdim = len(traced[0].shape), self._fdim(traced[0])
        if dim % n == fdim or any(self._fdim(v) != fdim or len(v.shape) != n for v in traced) \
                or fdim != n - 1:
            raise UnsupportedModuleError(path, "cat", "its parts do not carry their features in "
                                         "the last dimension")
        feats = []
        for a, v in zip(node.args[0], vals):
            if _is_param(v):
                feats.append(self.b.token(_param_of(v), path))
            else:
                feats.append(self._feat(self._take(node, a), "last"))
        return TracedValue(self.b.sequence(feats, path), self._shape(node), fdim)


# -- declarative dispatch ----------------------------------------------------------------------------
# One table per kind of fx node: a call_module node's handler is found along its module type's MRO
# (subclasses of a supported layer match), a call_function node's by its target, a call_method
# node's by the method name. A handler takes the converter, the node and the node's submodule path
# (and, for modules, the module) and returns the node's value; nodes no table names are refused.

Handler = Callable[..., object]


def _on_input(method: Callable, *extra) -> Handler:
    """A handler that calls ``method(converter, node, <the node's tensor input>, *extra)``."""
    def handler(c: FxConverter, node: fx.Node, path: str, m: nn.Module | None = None):
        return method(c, node, c._take(node, node.args[0]), *extra)
    return handler


def _on_node(method: Callable, *extra) -> Handler:
    """A handler that calls ``method(converter, node, *extra)``."""
    def handler(c: FxConverter, node: fx.Node, path: str):
        return method(c, node, *extra)
    return handler


def _passthrough(c: FxConverter, node: fx.Node, val: TracedValue) -> TracedValue:
    return val


def _transparent_module(c: FxConverter, node: fx.Node, path: str, m: nn.Module):
    """Identity and dropout (eval mode) pass their input on, attention heads and scores
    included: timm's attention applies ``q_norm``/``k_norm`` (Identity unless asked for) to the
    heads and ``attn_drop`` to the scores."""
    from . import attention

    val = c.env.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    if attention.is_heads(val):
        return val
    return c._take(node, node.args[0])


def _nothing(c: FxConverter, node: fx.Node, path: str):
    return None  # shape queries (the shape pass already knows every shape)


def _module_handler(cls: type) -> Handler | None:
    """The handler of the first class in ``cls``'s MRO that ``_MODULE_HANDLERS`` names."""
    return next((_MODULE_HANDLERS[k] for k in cls.__mro__ if k in _MODULE_HANDLERS), None)


def _linear_module(c: FxConverter, node: fx.Node, path: str, m: nn.Linear):
    return c._linear(node, c._take(node, node.args[0]), path,
                     c._param(path, "weight", m.weight), c._param(path, "bias", m.bias))


def _conv_module(c: FxConverter, node: fx.Node, path: str, m: nn.Module):
    return c._conv(node, c._take(node, node.args[0]), path,
                   c._param(path, "weight", m.weight), c._param(path, "bias", m.bias), m.groups)


def _group_norm_module(c: FxConverter, node: fx.Node, path: str, m: nn.GroupNorm):
    params = {"norm_weight": c._param(path, "weight", m.weight),
              "norm_bias": c._param(path, "bias", m.bias)}
    return c._channel_norm(node, c._take(node, node.args[0]), path, NormKind.GROUP,
                           m.num_groups, params)


def _instance_norm_module(c: FxConverter, node: fx.Node, path: str, m: nn.Module):
    params = {"norm_weight": c._param(path, "weight", m.weight),
              "norm_bias": c._param(path, "bias", m.bias)}
    kind = NormKind.INSTANCE
    if m.track_running_stats:  # eval mode normalises with the running statistics: a batch norm
        params["running_mean"] = c._param(path, "running_mean", m.running_mean)
        params["running_var"] = c._param(path, "running_var", m.running_var)
        kind = NormKind.BATCH
    return c._channel_norm(node, c._take(node, node.args[0]), path, kind, 1, params)


def _clip(lo, hi) -> Activation:
    """The activation code of ``clamp(z, lo, hi)``."""
    if lo == 0 and hi is None:
        return Activation.RELU
    if lo == 0 and hi == 6:
        return Activation.RELU6
    if lo is not None and hi is not None and lo == -hi:
        return Activation.HARDTANH
    return Activation.CLIP


def _hardtanh_module(c: FxConverter, node: fx.Node, path: str, m: nn.Hardtanh):
    return c._activation(node, c._take(node, node.args[0]), _clip(m.min_val, m.max_val))


def _gelu_code(approximate) -> Activation:
    return Activation.GELU_TANH if approximate == "tanh" else Activation.GELU


def _gelu_module(c: FxConverter, node: fx.Node, path: str, m: nn.GELU):
    return c._activation(node, c._take(node, node.args[0]), _gelu_code(m.approximate))


def _sigmoid_module(c: FxConverter, node: fx.Node, path: str, m: nn.Module | None = None):
    half = _silu_half(node)
    if half is not None:
        return half
    return c._activation(node, c._take(node, node.args[0]), Activation.SIGMOID)


_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}


def _silu_half(node: fx.Node) -> _SiluHalf | None:
    """``sigmoid(x)`` whose only use is ``x * sigmoid(x)``: SiLU, read at the product."""
    x = node.args[0] if node.args else None
    if not isinstance(x, fx.Node) or len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op in ("call_function", "call_method") and user.target in _MUL \
            and len(user.args) >= 2 and set(user.args[:2]) == {x, node}:
        return _SiluHalf(x)
    return None


def _upsample(c: FxConverter, node: fx.Node, path: str, mode: str) -> TracedValue:
    """Upsampling (``nn.Upsample``, ``F.interpolate``): each output position of a channel is a
    fixed combination of that channel's input positions, so every channel's scale, sign and
    order pass through. Nearest copies positions (nothing changes for the graph); the other
    modes average them, like a pooling (an activation after them does not fold back)."""
    val = c._take(node, node.args[0])
    if mode in ("nearest", "nearest-exact"):
        if val.feat is not None and c._fdim(val) != 1:
            raise UnsupportedModuleError(path, c._owner(path, "upsample"), "its features are "
                                         "not in dimension 1")
        return TracedValue(val.feat, c._shape(node), val.fdim)
    return c._pool(node, val, "avg")


def _upsample_module(c: FxConverter, node: fx.Node, path: str, m: nn.Upsample):
    return _upsample(c, node, path, m.mode)


def _interpolate_function(c: FxConverter, node: fx.Node, path: str):
    return _upsample(c, node, path, node_arg(node, 3, "mode", "nearest"))


def _batch_norm_module(c: FxConverter, node: fx.Node, path: str, m: nn.Module):
    return c._batch_norm(node, c._take(node, node.args[0]), path, m)


# Operations that keep token ids token ids (HF's input_ids.view(-1, seq_len)).
_ID_VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unsqueeze", "squeeze", "contiguous",
             "clone", "to", "_to_copy", "alias", "expand", "long", "int", "getitem", "slice"}


def data_of(c: FxConverter, node: fx.Node, name: str) -> Data | None:
    """The :class:`Data` value of an operation that reads inputs without neurons (token ids,
    masks) and nothing else, or None."""
    inputs = [c.env.get(a) for a in node.all_input_nodes]
    if not any(isinstance(v, Data) for v in inputs) \
            or not all(v is None or isinstance(v, (Data, Const)) for v in inputs):
        return None
    tokens = name in _ID_VIEWS and all(v.tokens for v in inputs if isinstance(v, Data))
    return Data(c._shape(node), tokens=tokens)


def _broadcast_features(a: TracedValue, b: TracedValue) -> bool:
    """Two values with features in their last dimension whose other dimensions broadcast."""
    if a.shape == b.shape or a.feat is None or b.feat is None or a.feat.size != b.feat.size:
        return False
    if a.fdim % len(a.shape) != len(a.shape) - 1 or b.fdim % len(b.shape) != len(b.shape) - 1:
        return False
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return False
    return True


def _is_param(val) -> bool:
    """A state_dict tensor (``(name, tensor)``) or a view of one."""
    return isinstance(val, _ParamView) or (isinstance(val, tuple) and len(val) == 2
                                           and isinstance(val[1], Tensor))


def _param_of(val) -> tuple[str, Tensor]:
    return (val.name, val.tensor) if isinstance(val, _ParamView) else val


def _expand_any(c: FxConverter, node: fx.Node, path: str):
    """``cls_token.expand(B, -1, -1)``, or an activation expanded along its positions."""
    val = c.env.get(node.args[0])
    if _is_param(val):
        return _ParamView(*_param_of(val), c._shape(node))
    val = c._take(node, node.args[0])
    if val.feat is not None and c._shape(node)[c._fdim(val)] != val.shape[c._fdim(val)]:
        raise UnsupportedModuleError(path, "expand", "it repeats the features")
    return TracedValue(val.feat, c._shape(node), val.fdim)


# -- branches side by side: selective kernel (SKNet) and split attention (ResNeSt) -----------------
# Their branch outputs are stacked (torch.stack) or viewed (x.view(B, radix, C, H, W)) into a
# split feature dimension (branches, C). A softmax across its first dimension, a sum over it,
# the product of two such values and transposes inside it are read here, before the attention
# reader (paramgraph.attention) takes other operations on split features as attention heads.


def _one_channel_along_features(val: TracedValue) -> bool:
    """Whether ``val`` is one channel (dimension 1 of size 1) whose only dimension of size > 1
    beyond the batch is the features: what ECA's ``y.view(B, 1, C)`` gives its Conv1d."""
    fdim = val.fdim % len(val.shape)
    return val.split is None and fdim >= 2 and val.shape[1] == 1 and all(
        k == 1 for i, k in enumerate(val.shape[2:], 2) if i != fdim)


def _pooled_split(shape: tuple[int, ...], fdim: int, out: tuple[int, ...]):
    """The split dimensions when a pooled feature vector (only singletons after its features) is
    viewed with the same leading dimensions as the shortest run ``out[fdim:fdim + m]``, m >= 2,
    covering the features and followed by singletons only (split attention's radix softmax:
    ``(B, C * r, 1, 1) -> (B, cardinality, r, C / cardinality)``); None otherwise."""
    size = shape[fdim]
    if math.prod(shape[fdim + 1:]) != 1 or tuple(out[:fdim]) != tuple(shape[:fdim]):
        return None
    for m in range(2, len(out) - fdim + 1):
        if math.prod(out[fdim:fdim + m]) == size and math.prod(out[fdim + m:]) == 1:
            return tuple(out[fdim:fdim + m])
    return None


def _branch_op(c: FxConverter, node: fx.Node) -> Handler | None:
    """The handler of ``node`` when it works on branches side by side (its first argument has a
    split feature dimension whose first dimension is the branches), else None."""
    arg = node.args[0] if node.args else None
    val = c.env.get(arg) if isinstance(arg, fx.Node) else None
    if not (isinstance(val, TracedValue) and val.split is not None and val.feat is not None):
        return None
    if _shape_query(node):
        return _nothing
    name, n, fdim = op_name(node), len(val.shape), c._fdim(val)
    if name in ("softmax", "_softmax"):
        dim = node_arg(node, 1, "dim")
        return _branch_softmax if isinstance(dim, int) and dim % n == fdim else None
    if name in _REDUCE:
        dims = node_arg(node, 1, "dim")
        dims = [d % n for d in (dims if isinstance(dims, (tuple, list)) else (dims,))] \
            if dims is not None else None
        if dims != [fdim]:
            return None
        return _branch_sum if name == "sum" else _branch_mean
    if name in ("mul", "mul_") and len(node.args) >= 2:
        other = c.env.get(node.args[1]) if isinstance(node.args[1], fx.Node) else None
        same = isinstance(other, TracedValue) and other.split == val.split \
            and c._fdim(other) - len(other.shape) == fdim - n
        return _branch_product if same else None
    if name == "transpose" and len(node.args) >= 3:
        axes = sorted(d % n - fdim for d in node.args[1:3])
        return _branch_transpose if axes[0] >= 0 and axes[1] < len(val.split) else None
    if name == "permute":  # core ATen writes that transpose as a permute
        return _branch_permute if _split_order(node, val, fdim) is not None else None
    return None


def split_sizes(name: str, how, size: int) -> list[int]:
    """The piece sizes of ``split``/``chunk``/``split_with_sizes`` of a dimension of ``size``:
    ``how`` is the chunk count, one piece size, or the list of sizes."""
    if name == "chunk":
        step = -(-size // how)
        return [min(step, size - i) for i in range(0, size, step)]
    if isinstance(how, int):
        return [min(how, size - i) for i in range(0, size, how)]
    return list(how)


def _split_order(node: fx.Node, val: TracedValue, fdim: int) -> list[int] | None:
    """The order of the split dimensions a ``permute`` gives them, when it moves nothing else."""
    dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) \
        else node.args[1:]
    n, k = len(val.shape), len(val.split)
    dims = [d % n for d in dims]
    inside = range(fdim, fdim + k)
    if any(d != i for i, d in enumerate(dims) if i not in inside) \
            or sorted(dims[fdim:fdim + k]) != list(inside):
        return None
    return [d - fdim for d in dims[fdim:fdim + k]]


def _branch_permute(c: FxConverter, node: fx.Node, path: str) -> TracedValue:
    val = c._take(node, node.args[0])
    return c._permute_split(node, val, _split_order(node, val, c._fdim(val)))


def _branch_transpose(c: FxConverter, node: fx.Node, path: str) -> TracedValue:
    """A transpose inside the split dimensions (split attention's (cardinality, radix) swap)."""
    return c._swap_split(node, c._take(node, node.args[0]), node.args[1:3])


def _with_split(feat: Feat, shape: tuple[int, ...], fdim: int, split) -> TracedValue:
    """A value whose features span dimensions ``split`` from ``fdim``: a plain one when at most
    one of them is larger than 1."""
    big = [i for i, k in enumerate(split) if k != 1]
    if len(big) <= 1:
        return TracedValue(feat, shape, fdim + (big[0] if big else 0))
    return TracedValue(feat, shape, fdim, split=tuple(split))


def _branch_softmax(c: FxConverter, node: fx.Node, path: str) -> TracedValue:
    """``softmax(x, dim)`` across the branches (:meth:`GraphBuilder.softmax`)."""
    val = c._take(node, node.args[0])
    return replace(val, feat=c.b.softmax(val.feat, val.split[0]))


def _branch_sum(c: FxConverter, node: fx.Node, path: str) -> TracedValue:
    """``x.sum(dim)`` over the branches (:meth:`GraphBuilder.branch_sum`)."""
    val = c._take(node, node.args[0])
    fdim = c._fdim(val)
    feat = c.b.branch_sum(val.feat, val.split[0], path)
    keep = node_arg(node, 2, "keepdim", False)
    return _with_split(feat, c._shape(node), fdim + 1 if keep else fdim, val.split[1:])


def _pad(c: FxConverter, node: fx.Node, path: str) -> TracedValue:
    """``F.pad`` of positions (timm's "same" padding before a convolution): the neurons are
    untouched. Zeros, reflection, replication and wrapping commute with every channel's scale,
    sign and order; a non-zero constant would not (it does not scale with its channel)."""
    val = c._take(node, node.args[0])
    nd = op_name(node) == "constant_pad_nd"  # aten.constant_pad_nd(x, pad, value)
    pad = node_arg(node, 1, "pad")
    mode = "constant" if nd else node_arg(node, 2, "mode", "constant")
    value = node_arg(node, 2 if nd else 3, "value", 0) or 0
    n = len(val.shape)
    padded = {n - 1 - i // 2 for i, p in enumerate(pad) if p}
    if val.feat is not None and (val.split is not None or c._fdim(val) in padded):
        raise UnsupportedModuleError(path, c._owner(path, "pad"), "it pads the features; only "
                                     "padding positions is supported")
    if mode == "constant" and value != 0:
        raise UnsupportedModuleError(path, c._owner(path, "pad"), f"it pads with the constant "
                                     f"{value}, which does not scale with its channel; pad with "
                                     "zeros")
    return TracedValue(val.feat, c._shape(node), val.fdim)


def _branch_mean(c: FxConverter, node: fx.Node, path: str):
    raise UnsupportedModuleError(path, c._owner(path, op_name(node)), "it reduces over the "
                                 "branches of a split feature dimension with a mean or max; only "
                                 "their sum is supported (fold a 1 / branches factor into the "
                                 "layer that reads it)")


def _branch_product(c: FxConverter, node: fx.Node, path: str) -> TracedValue:
    """The branches times their attention weights, both split alike
    (:meth:`GraphBuilder.product` with ``branches``)."""
    a, b = (c._take(node, x) for x in node.args[:2])
    out = c._shape(node)
    feat = c.b.product(a.feat, b.feat, path, branches=a.split[0])
    return TracedValue(feat, out, len(out) + c._fdim(a) - len(a.shape), split=a.split)


def _stack(c: FxConverter, node: fx.Node, path: str) -> TracedValue:
    """``torch.stack(values, dim)`` right before their features: the branch outputs of a
    selective-kernel block side by side, features split (branches, C)."""
    parts = [c._take(node, a) for a in node_arg(node, 0, "tensors")]
    feats = [c._feat(p, "channels") for p in parts]
    fdim = c._fdim(parts[0])
    dim = node_arg(node, 1, "dim", 0) % (len(parts[0].shape) + 1)
    if dim != fdim or any(p.shape != parts[0].shape or c._fdim(p) != fdim for p in parts):
        raise UnsupportedModuleError(path, c._owner(path, "stack"), "only values of one shape "
                                     "stacked right before their features (dim = their feature "
                                     "dimension, as a selective-kernel block stacks its "
                                     "branches) are supported")
    return TracedValue(c.b.concat(feats, path), c._shape(node), fdim,
                       split=(len(parts), feats[0].size))


def _embedding_module(c: FxConverter, node: fx.Node, path: str, m: nn.Embedding):
    if m.max_norm is not None:
        raise UnsupportedModuleError(path, "Embedding", "max_norm renormalises the table in "
                                     "forward; convert a table without max_norm")
    return c._embed(node, c.env.get(node.args[0]), c._param(path, "weight", m.weight), path)


def _embedding_function(c: FxConverter, node: fx.Node, path: str):
    (w,) = c._attr_args(node, 1, ("weight",))
    return c._embed(node, c.env.get(node.args[0]), w, path)


def _rms_norm_module(c: FxConverter, node: fx.Node, path: str, m: nn.Module):
    return c._rms_norm(node, c._take(node, node.args[0]), path, m.normalized_shape,
                       c._param(path, "weight", m.weight))


def _rms_norm_function(c: FxConverter, node: fx.Node, path: str):
    (w,) = c._attr_args(node, 2, ("weight",))
    return c._rms_norm(node, c._take(node, node.args[0]), path,
                       node_arg(node, 1, "normalized_shape"), w)


def _addmm_function(c: FxConverter, node: fx.Node, path: str):
    """``torch.addmm(bias, x, W)`` with W ``[in, out]`` (GPT-2's Conv1D): a linear layer whose
    weight is stored transposed."""
    if node_arg(node, 3, "beta", 1) != 1 or node_arg(node, 4, "alpha", 1) != 1:
        raise UnsupportedModuleError(path, "addmm", "beta/alpha other than 1 are not supported")
    (bias,) = c._attr_args(node, 0, ("bias",))
    (w,) = c._attr_args(node, 2, ("weight",))
    val = c._take(node, node.args[1])
    feat = c.b.linear(c._feat(val, "last"), w, bias, path, transposed=True)
    return c._result(node, feat)


def _heads_function(c: FxConverter, node: fx.Node, path: str):
    """Attention products and ``F.scaled_dot_product_attention`` (:mod:`paramgraph.attention`)."""
    from . import attention

    return attention.call(c, node, op_name(node))


def _layer_norm_module(c: FxConverter, node: fx.Node, path: str, m: nn.LayerNorm):
    return c._layer_norm(node, c._take(node, node.args[0]), path, m.normalized_shape,
                         c._param(path, "weight", m.weight), c._param(path, "bias", m.bias))


def _attention_module(c: FxConverter, node: fx.Node, path: str, m: nn.MultiheadAttention):
    return c._mha_call(node, path, m)


def _encoder_layer_module(c: FxConverter, node: fx.Node, path: str,
                          m: nn.TransformerEncoderLayer):
    val = c._take(node, node.args[0])
    c._no_masks(node, path, m, skip=1)
    feat = c._encoder_layer(path, m, c._feat(val, "last"), val)
    return c._result(node, feat)


def _encoder_module(c: FxConverter, node: fx.Node, path: str, m: nn.TransformerEncoder):
    val = c._take(node, node.args[0])
    c._no_masks(node, path, m, skip=1)
    feat = c._feat(val, "last")
    for i, layer in enumerate(m.layers):
        feat = c._encoder_layer(f"{path}.layers.{i}", layer, feat, val)
    if m.norm is not None:
        feat = c._ln_feat(f"{path}.norm", m.norm, feat, val)
    return c._result(node, feat)


_MODULE_HANDLERS: dict[type, Handler] = {
    **dict.fromkeys(_TRANSPARENT_MODULES, _transparent_module),
    nn.Linear: _linear_module,
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv_module),
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), _batch_norm_module),
    nn.LayerNorm: _layer_norm_module,
    **{cls: _on_input(FxConverter._activation, act) for cls, act in _ACT_MODULES.items()},
    nn.Flatten: _on_input(FxConverter._reshape),
    **{cls: _on_input(FxConverter._pool, how) for cls, how in _POOL_MODULES.items()},
    nn.MultiheadAttention: _attention_module,
    nn.TransformerEncoderLayer: _encoder_layer_module,
    nn.TransformerEncoder: _encoder_module,
    nn.GroupNorm: _group_norm_module,
    **dict.fromkeys((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
                    _instance_norm_module),
    nn.Hardtanh: _hardtanh_module,
    nn.GELU: _gelu_module,
    nn.Sigmoid: _sigmoid_module,
    nn.Upsample: _upsample_module,  # and its subclasses UpsamplingNearest2d/Bilinear2d
    nn.Embedding: _embedding_module,
    nn.RMSNorm: _rms_norm_module,
}


def _shape_query(node: fx.Node) -> bool:
    """``x.shape``, ``x.ndim``, ``x.size()``, ``x.dim()``: reads no values (does not stop a fold)."""
    return (node.op == "call_function" and node.target is getattr) or \
        (node.op == "call_method" and node.target in ("size", "dim"))


def _target_name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _unsupported_call(c: FxConverter, node: fx.Node, path: str):
    raise UnsupportedModuleError(path, c._owner(path, f"{node.op} {_target_name(node.target)}"),
                                 "this operation is not supported; rewrite it with supported "
                                 "operations (paramgraph inspect --supported lists them)")


def _reshape_any(c: FxConverter, node: fx.Node, path: str):
    """A reshape of an activation, or of a parameter (``gamma.view(1, -1, 1, 1)``)."""
    src = node.args[0]
    val = c.env.get(src) if isinstance(src, fx.Node) else None
    if isinstance(val, _ParamView) or (isinstance(val, tuple) and len(val) == 2
                                       and isinstance(val[1], Tensor)):
        name, tensor = (val.name, val.tensor) if isinstance(val, _ParamView) else val
        return _ParamView(name, tensor, c._shape(node))
    return c._reshape(node, c._take(node, src))


def _size_arithmetic(c: FxConverter, node: fx.Node, path: str):
    """``num_channels // groups`` and the like: arithmetic on sizes, not on activations."""
    if any(isinstance(c.env.get(a), (TracedValue, _Pieces)) for a in node.all_input_nodes):
        return _unsupported_call(c, node, path)
    return None


def _gelu_function(c: FxConverter, node: fx.Node, path: str):
    return c._activation(node, c._take(node, node.args[0]),
                         _gelu_code(node_arg(node, 1, "approximate", "none")))


def _hardtanh_function(c: FxConverter, node: fx.Node, path: str):
    lo, hi = node_arg(node, 1, "min_val", -1.0), node_arg(node, 2, "max_val", 1.0)
    return c._activation(node, c._take(node, node.args[0]), _clip(lo, hi))


def _clamp_function(c: FxConverter, node: fx.Node, path: str):
    name = _target_name(node.target)
    if name == "clamp_min":
        lo, hi = node_arg(node, 1, "min"), None
    else:
        lo, hi = node_arg(node, 1, "min"), node_arg(node, 2, "max")
    if any(isinstance(v, (fx.Node, Tensor)) for v in (lo, hi)):
        return _unsupported_call(c, node, path)
    return c._activation(node, c._take(node, node.args[0]), _clip(lo, hi))


def _batch_norm_function(c: FxConverter, node: fx.Node, path: str):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training, ...)`` in eval form
    (timm's BatchNormAct2d calls it); batch statistics (training=True) are refused."""
    if node_arg(node, 5, "training", False) is not False:
        raise UnsupportedModuleError(path, c._owner(path, "batch_norm"), "it normalises with the "
                                     "batch's statistics (training=True or no running "
                                     "statistics); convert a module with running statistics")
    mean, var, w, b = c._attr_args(node, 1, ("running_mean", "running_var", "weight", "bias"))
    val = c._take(node, node.args[0])
    if val.feat is not None and c._fdim(val) != 1:
        raise UnsupportedModuleError(path, "batch_norm", "its features are not in dim 1")
    params = {k: v for k, v in (("norm_weight", w), ("norm_bias", b), ("running_mean", mean),
                                ("running_var", var)) if v is not None}
    feat = c.b.norm(c._feat(val, "channels"), NormKind.BATCH, params, path)
    return c._result(node, feat, 1)


def _group_norm_function(c: FxConverter, node: fx.Node, path: str):
    w, b = c._attr_args(node, 2, ("weight", "bias"))
    return c._channel_norm(node, c._take(node, node.args[0]), path, NormKind.GROUP,
                           node_arg(node, 1, "num_groups"), {"norm_weight": w, "norm_bias": b})


def _assert(c: FxConverter, node: fx.Node, path: str):
    return None if not node.users else _unsupported_call(c, node, path)


def _linear_function(c: FxConverter, node: fx.Node, path: str):
    w, b = c._attr_args(node, 1, ("weight", "bias"))
    return c._linear(node, c._take(node, node.args[0]), path, w, b)


def _conv_function(c: FxConverter, node: fx.Node, path: str):
    groups = node_arg(node, 6, "groups", 1)
    w, b = c._attr_args(node, 1, ("weight", "bias"))
    return c._conv(node, c._take(node, node.args[0]), path, w, b, groups)


def _layer_norm_function(c: FxConverter, node: fx.Node, path: str):
    w, b = c._attr_args(node, 2, ("weight", "bias"))
    return c._layer_norm(node, c._take(node, node.args[0]), path,
                         node_arg(node, 1, "normalized_shape"), w, b)


_FUNCTION_HANDLERS: dict[object, Handler] = {
    getattr: _nothing,
    operator.getitem: _on_node(FxConverter._getitem),
    torch._assert: _assert,
    fx._symbolic_trace._assert_is_none: _assert,
    F.embedding: _embedding_function,
    F.rms_norm: _rms_norm_function,
    torch.addmm: _addmm_function,
    **dict.fromkeys((torch.matmul, operator.matmul, F.scaled_dot_product_attention),
                    _heads_function),
    **{f: _on_input(FxConverter._activation, act) for f, act in _ACT_FUNCTIONS.items()},
    **dict.fromkeys(_TRANSPARENT_FUNCTIONS, _on_input(_passthrough)),
    **dict.fromkeys(_RESHAPE_FUNCTIONS, _reshape_any),
    **dict.fromkeys((torch.transpose, torch.permute), _on_input(FxConverter._transpose)),
    **dict.fromkeys((operator.add, operator.iadd, torch.add), _on_node(FxConverter._add)),
    **dict.fromkeys((operator.mul, operator.imul, torch.mul), _on_node(FxConverter._mul)),
    **dict.fromkeys((torch.chunk, torch.split), _on_node(FxConverter._split)),
    **dict.fromkeys((torch.sigmoid, F.sigmoid), _sigmoid_module),
    F.gelu: _gelu_function,
    **dict.fromkeys((F.hardtanh, F.hardtanh_), _hardtanh_function),
    **dict.fromkeys((torch.clamp, torch.clip, torch.clamp_min), _clamp_function),
    F.group_norm: _group_norm_function,
    F.batch_norm: _batch_norm_function,
    **dict.fromkeys((operator.floordiv, operator.truediv, operator.sub, operator.mod,
                     operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
                     operator.and_, operator.or_, operator.not_), _size_arithmetic),
    torch.cat: _on_node(FxConverter._cat),
    torch.stack: _stack,
    **{f: _on_input(FxConverter._pool, how) for f, how in _POOL_FUNCTIONS.items()},
    **{getattr(torch, name): _on_node(FxConverter._reduce, how) for name, how in _REDUCE.items()},
    F.linear: _linear_function,
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d), _conv_function),
    F.layer_norm: _layer_norm_function,
    F.pad: _pad,
    F.interpolate: _interpolate_function,
}

_METHOD_HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(("size", "dim"), _nothing),
    **{name: _on_input(FxConverter._activation, act) for name, act in _ACT_METHODS.items()},
    **dict.fromkeys(_TRANSPARENT_METHODS, _on_input(_passthrough)),
    **dict.fromkeys(_RESHAPE_METHODS, _reshape_any),
    **dict.fromkeys(("transpose", "permute", "t"), _on_input(FxConverter._transpose)),
    **dict.fromkeys(("add", "add_"), _on_node(FxConverter._add)),
    **dict.fromkeys(("mul", "mul_"), _on_node(FxConverter._mul)),
    **dict.fromkeys(("chunk", "split"), _on_node(FxConverter._split)),
    **dict.fromkeys(("expand", "expand_as"), _expand_any),
    "matmul": _heads_function,
    **dict.fromkeys(("sigmoid", "sigmoid_"), _sigmoid_module),
    **dict.fromkeys(("clamp", "clip", "clamp_min", "clamp_", "clamp_min_"), _clamp_function),
    **{name: _on_node(FxConverter._reduce, how) for name, how in _REDUCE.items()},
}


def node_arg(node: fx.Node, pos: int, name: str, default=None):
    """Argument ``name`` of ``node``: its positional argument ``pos`` if given, else the keyword
    argument, else ``default``."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _fetch_attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, Tensor) else obj


def _encoder_activation(path: str, m: nn.TransformerEncoderLayer) -> Activation:
    act = m.activation
    if act in (F.relu, torch.relu) or isinstance(act, nn.ReLU):
        return Activation.RELU
    if act is F.gelu or isinstance(act, nn.GELU):
        return Activation.GELU
    raise UnsupportedModuleError(path, "TransformerEncoderLayer", f"activation {act!r} is not "
                                 "supported (relu or gelu)")
