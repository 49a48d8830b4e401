"""The published Small CNN Zoo layout (Unterthiner et al. 2020, "Predicting Neural Network Accuracy
from Weights"; the data NFN, ScaleGMN and the Quasi-NFN paper train on), read for
``paramgraph zoo import SRC --format small-cnn-zoo``.

One directory per data set (mnist, fashion_mnist, cifar10, svhn_cropped) holds::

    weights.npy            [N, P] float32: every network's parameters, one row per checkpoint
    layout.csv             varname,start_idx,end_idx,shape (and size): where each TensorFlow
                           variable lies in a row, e.g. sequential/conv2d/kernel:0, 0, 144,
                           "(3, 3, 1, 16)"
    metrics.csv(.gz)       N rows, aligned with weights.npy: test_accuracy, test_loss,
                           train_accuracy, ..., step (the epoch of the checkpoint), modeldir (the
                           training run) and the hyperparameters as config.* columns
                           (config.activation, config.learning_rate, ...)

TensorFlow stores a convolution kernel as ``[H, W, in, out]`` (HWIO) and a dense kernel as
``[in, out]``; PyTorch wants ``[out, in, H, W]`` and ``[out, in]``, so kernels are transposed
(HWIO -> OIHW, the same reordering NFN's and ScaleGMN's loaders do). The network is rebuilt in
PyTorch from the layout: a 4-d kernel is a ``Conv2d`` (stride 2, padding k // 2, as the published
CNN), the first 2-d kernel is preceded by global average pooling, each layer but the last is
followed by ``config.activation`` (relu or tanh in the published zoo). Stride and padding do not
change the parameter graph; they only make the rebuilt network run on an image.

The rows: by default only the final checkpoint of each run (``step`` equal to the largest step,
86 in the published zoo: what NFN and ScaleGMN use), ``steps="all"`` for every checkpoint or a
list of steps. Every metrics column becomes a label; ``test_acc`` is added as a copy of
``test_accuracy`` so that ``--task generalization`` works as on a made zoo. The group of a row is
its ``modeldir`` (else its run's ``config.*`` values), so the checkpoints of one run share a split.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ZooError
from .labels import parse_value

WEIGHTS, LAYOUT = "weights.npy", "layout.csv"
METRICS = ("metrics.csv", "metrics.csv.gz")
DEFAULT_INPUT = 32  # image side of the example input (the CNN pools globally: any size works)
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "leaky_relu", "gelu", "selu", "swish",
               "linear", "identity")


@dataclass(frozen=True)
class Variable:
    """One row of layout.csv: a TensorFlow variable's name, slice of a weights row and shape."""

    name: str
    start: int
    end: int
    shape: tuple[int, ...]

    @property
    def is_kernel(self) -> bool:
        return self.name.split("/")[-1].startswith("kernel")

    @property
    def layer(self) -> str:
        """The layer's name, usable as a PyTorch module name (``conv2d_1``, ``dense``)."""
        parts = self.name.split("/")
        return (parts[-2] if len(parts) > 1 else parts[0]).replace(".", "_").replace(":", "_")


@dataclass(frozen=True)
class SmallCnnRow:
    """One network of the zoo: row ``row`` of ``weights.npy`` with its activation. A
    :mod:`paramgraph.tasks.importer` source (``name``, ``content_digest``, ``options``)."""

    weights: str
    row: int
    activation: str
    layout: tuple[Variable, ...]
    input_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{Path(self.weights).name} row {self.row}"

    @property
    def arch_name(self) -> str:
        return f"small-cnn-zoo/{self.activation}"

    def options(self) -> str:
        return repr((self.activation, self.layout, self.input_shape))

    def content_digest(self) -> str:
        """SHA-256 of the row's bytes: a changed weights.npy row is noticed."""
        return hashlib.sha256(memory_map(self.weights)[self.row].tobytes()).hexdigest()

    def state_dict(self) -> dict:
        """The row as a PyTorch state_dict (kernels transposed to PyTorch's order)."""
        import numpy as np
        import torch

        values = np.asarray(memory_map(self.weights)[self.row], dtype=np.float32)
        state = {}
        for v in self.layout:
            t = values[v.start:v.end].reshape(v.shape)
            if v.is_kernel:
                t = t.transpose(3, 2, 0, 1) if t.ndim == 4 else t.T  # HWIO -> OIHW, [in, out]
            key = f"{v.layer}.{'weight' if v.is_kernel else 'bias'}"
            state[key] = torch.from_numpy(np.ascontiguousarray(t))
        return state

    def module(self):
        """The network rebuilt in PyTorch (see the module docstring), with fresh weights."""
        return build_network(self.layout, self.activation)


_MAPS: dict[str, object] = {}


def memory_map(path: str):
    """``weights.npy`` memory-mapped once per process (never read whole)."""
    import numpy as np

    if path not in _MAPS:
        _MAPS[path] = np.load(path, mmap_mode="r", allow_pickle=False)
    return _MAPS[path]


def build_network(layout: tuple[Variable, ...], activation: str):
    """A PyTorch ``nn.Sequential`` with the layout's layers (see the module docstring)."""
    from collections import OrderedDict

    from torch import nn

    kernels = [v for v in layout if v.is_kernel]
    layers: OrderedDict = OrderedDict()
    pooled = False
    for k, v in enumerate(kernels):
        if len(v.shape) == 4:
            h, w, cin, cout = v.shape
            layers[v.layer] = nn.Conv2d(cin, cout, (h, w), stride=2, padding=(h // 2, w // 2))
        else:
            if not pooled and k > 0 and len(kernels[k - 1].shape) == 4:
                layers["pool"] = nn.AdaptiveAvgPool2d(1)
                layers["flatten"] = nn.Flatten()
                pooled = True
            layers[v.layer] = nn.Linear(v.shape[0], v.shape[1])
        if k < len(kernels) - 1:
            layers[f"act{k}"] = _activation(activation)
    return nn.Sequential(layers)


def _activation(name: str):
    from torch import nn

    table = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
             "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "selu": nn.SELU, "swish": nn.SiLU,
             "linear": nn.Identity, "identity": nn.Identity}
    return table[name]()


class SmallCnnZoo:
    """A Small CNN Zoo directory, checked: its layout, its metrics table and the rows to import.

    Raises :class:`ZooError` with one line naming the file (and line or column) for a missing
    file, a layout that does not fit ``weights.npy``, a metrics table of another length, or an
    unknown activation.
    """

    def __init__(self, src: str | os.PathLike, steps: str = "final",
                 input_shape: tuple[int, ...] | None = None):
        self.src = Path(src)
        self.weights = self.src / WEIGHTS
        if not self.weights.is_file():
            raise ZooError(f"'{self.src}' is not a Small CNN Zoo directory: it has no "
                           f"{WEIGHTS} (it needs {WEIGHTS}, {LAYOUT} and metrics.csv or "
                           "metrics.csv.gz)")
        shape = self._weights_shape()
        self.layout = read_layout(self.src / LAYOUT, shape[1])
        self.metrics_path, self.columns, self.table = read_metrics(self.src)
        if len(self.table) != shape[0]:
            raise ZooError(f"{self.metrics_path} has {len(self.table)} rows but {self.weights} "
                           f"holds {shape[0]} networks; the two must be aligned row by row")
        cin = next(v.shape for v in self.layout if v.is_kernel)
        cin = cin[2] if len(cin) == 4 else None
        self.input_shape = input_shape or ((1, cin, DEFAULT_INPUT, DEFAULT_INPUT) if cin
                                           else (1, self.layout[0].shape[0]))
        self.rows = select_steps(self.table, steps, self.metrics_path)

    def _weights_shape(self) -> tuple[int, int]:
        try:
            array = memory_map(str(self.weights))
        except (ValueError, OSError) as err:
            raise ZooError(f"{self.weights}: not a readable .npy array ({err})") from None
        if array.ndim != 2:
            raise ZooError(f"{self.weights}: expected a [networks, parameters] array, got shape "
                           f"{list(array.shape)}")
        return tuple(array.shape)

    def source(self, k: int) -> SmallCnnRow:
        """The network of metrics row ``k`` (0-based)."""
        act = self.table[k].get("config.activation") or "relu"
        act = str(act).lower()
        if act not in ACTIVATIONS:
            raise ZooError(f"{self.metrics_path} line {k + 2}, column 'config.activation': "
                           f"unknown activation {act!r} (known: {', '.join(ACTIVATIONS)})")
        return SmallCnnRow(str(self.weights.resolve()), k, act, self.layout, self.input_shape)

    def labels(self, k: int) -> dict:
        """The labels of metrics row ``k``: every column, plus ``test_acc``."""
        values = dict(self.table[k])
        if "test_acc" not in values and "test_accuracy" in values:
            values["test_acc"] = values["test_accuracy"]
        return values

    def label_columns(self) -> list[str]:
        extra = ["test_acc"] if "test_accuracy" in self.columns and "test_acc" not in \
            self.columns else []
        return self.columns + extra

    def group(self, k: int):
        """The training run of row ``k`` (its checkpoints share a split)."""
        row = self.table[k]
        if row.get("modeldir") is not None:
            return row["modeldir"]
        config = tuple((c, row[c]) for c in self.columns if c.startswith("config."))
        return repr(config) if config else k


def read_layout(path: Path, width: int) -> tuple[Variable, ...]:
    """The variables of ``layout.csv``, checked against a weights row of ``width`` values."""
    if not path.is_file():
        raise ZooError(f"Small CNN Zoo layout '{path}' does not exist")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    need = ("varname", "start_idx", "end_idx", "shape")
    if not rows or any(c not in rows[0] for c in need):
        raise ZooError(f"{path}: expected the columns {', '.join(need)}")
    out = []
    for n, r in enumerate(rows, 2):
        try:
            shape = tuple(int(s) for s in ast.literal_eval(r["shape"].strip()))
            v = Variable(r["varname"], int(r["start_idx"]), int(r["end_idx"]), shape)
        except (ValueError, SyntaxError, TypeError):
            raise ZooError(f"{path} line {n}: cannot read start_idx/end_idx/shape "
                           f"({r['start_idx']!r}, {r['end_idx']!r}, {r['shape']!r})") from None
        size = 1
        for s in shape:
            size *= s
        if v.end - v.start != size or v.end > width or v.start < 0:
            raise ZooError(f"{path} line {n}: {v.name} spans [{v.start}, {v.end}) for shape "
                           f"{shape} in rows of {width} values")
        if not v.name.split("/")[-1].startswith(("kernel", "bias")):
            raise ZooError(f"{path} line {n}: variable {v.name!r} is neither a kernel nor a bias")
        out.append(v)
    return tuple(out)


def read_metrics(src: Path) -> tuple[Path, list[str], list[dict]]:
    """``(path, columns, rows)`` of metrics.csv or metrics.csv.gz (typed values; unnamed
    index columns dropped)."""
    path = next((src / m for m in METRICS if (src / m).is_file()), None)
    if path is None:
        raise ZooError(f"'{src}' has no metrics.csv or metrics.csv.gz (the Small CNN Zoo's labels)")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as err:
        raise ZooError(f"{path}: cannot be read ({err})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    keep = [k for k, h in enumerate(header) if h.strip() and not h.startswith("Unnamed")]
    columns = [header[k].strip() for k in keep]
    rows = [{columns[j]: parse_value(cells[k]) if k < len(cells) else None
             for j, k in enumerate(keep)} for cells in reader if cells]
    return path, columns, rows


def select_steps(table: list[dict], steps: str, path: Path) -> list[int]:
    """The metrics rows to import: ``final`` (the largest step), ``all``, or steps ``"20,86"``."""
    if steps == "all" or not table or "step" not in table[0]:
        return list(range(len(table)))
    if steps == "final":
        wanted = {max(r["step"] for r in table if isinstance(r.get("step"), (int, float)))}
    else:
        try:
            wanted = {int(s) for s in steps.split(",") if s.strip()}
        except ValueError:
            raise ZooError(f"--steps '{steps}': expected final, all or comma-separated "
                           "integers") from None
    rows = [k for k, r in enumerate(table) if r.get("step") in wanted]
    if not rows:
        raise ZooError(f"{path}: no row has step {', '.join(map(str, sorted(wanted)))}")
    return rows
