"""PyTorch Geometric data sets over a zoo directory.

Every network of a zoo is converted once (``paramgraph.from_module`` on the rebuilt module, or a
template fill for a repeated architecture) and the graphs are cached under ``ZOO/cache/`` as a
:mod:`paramgraph.store` (sharded safetensors, memory-mapped, no pickle). The cache directory name
contains a key made of the zoo's fingerprint (a hash of its metadata table, which records each
checkpoint's SHA-256, and of its splits), the paramgraph version and the cache format, so a changed
zoo, converter or format is never served stale graphs; stale caches are deleted when a new one is
written.

The cache is written while converting (one shard of ``SHARD_SIZE`` graphs at a time) and read
lazily: :func:`load_graphs` returns a :class:`GraphCache`, a sequence that memory-maps a shard when
one of its graphs is first read, so memory stays flat however large the zoo (DataLoader workers
each open their own mappings). A shard whose bytes no longer match its SHA-256 raises
:class:`CorruptCacheError` naming the shard file, with the command that repairs it
(``paramgraph zoo cache DIR --rebuild`` or ``paramgraph train ... --rebuild-cache``: only the bad
shards are converted again, see :func:`repair_cache`).

:class:`ZooDataset` yields :class:`~paramgraph.ParamGraph` objects with a target ``y`` and the
network's id ``net_id``; batch them with ``torch_geometric.loader.DataLoader``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Batch, Dataset

import paramgraph
from paramgraph import ParamGraph
from paramgraph.models.gauge import GAUGE_INPUT_FIELDS, KAPPA_FEATURES, GaugeInputs
from paramgraph.models.metanet import prepare
from paramgraph.store import CorruptShardError, GraphStore, write_store

from .archs import example_input
from .errors import TaskError, ZooError
from .threads import threads
from .io import sha256_text
from .objectives import Objective, objective_of_target
from .zoo import Zoo

CACHE_FORMAT = 3  # 3: edge_index in int32
SHARD_SIZE = 1024


def cache_key(zoo: Zoo) -> str:
    """The 16-hex-digit key of the zoo's graph cache (see the module docstring)."""
    return sha256_text(f"{zoo.fingerprint()}|{paramgraph.__version__}|{CACHE_FORMAT}")[:16]


def convert_network(zoo: Zoo, i: int, templates: dict | None = None) -> ParamGraph:
    """Network ``i`` of ``zoo`` as a parameter graph.

    With ``templates`` (a dict kept between calls), each distinct architecture is traced once and
    later networks of the same spec are filled into its graph (``paramgraph.from_state_dict``),
    which gives the same graph much faster. Raises :class:`ZooError` naming the network if its
    checkpoint is missing/corrupt or cannot be converted. An imported zoo's networks are graph
    files already (converted by ``paramgraph zoo import``): they are read as they are.
    """
    if zoo.imported:
        return zoo.graph_file(i).graph
    spec = zoo.rows[i]["spec"]
    key = json.dumps(spec, sort_keys=True)
    try:
        if templates is not None and key in templates:
            return paramgraph.from_state_dict(templates[key], zoo.state_dict(i))
        model = zoo.model(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = paramgraph.from_module(model, example_input(spec))
    except paramgraph.ParamGraphError as err:
        if isinstance(err, ZooError):
            raise
        raise ZooError(f"zoo '{zoo.root}' network {i} ({zoo.rows[i].get('arch')}) cannot be "
                       f"converted: {err}") from None
    if templates is not None:
        templates[key] = graph
    return graph


class CorruptCacheError(ZooError):
    """A shard of a zoo's graph cache that is missing, truncated or altered. ``path``: the shard
    file; ``zoo``: the zoo directory."""

    def __init__(self, message: str, path: Path | None = None, zoo: Path | None = None):
        super().__init__(message)
        self.path, self.zoo = path, zoo


class GraphCache(GraphStore):
    """The graph cache of a zoo: a lazily read :class:`~paramgraph.store.GraphStore` whose
    corrupt shards raise :class:`CorruptCacheError` with the command that rebuilds them."""

    def __init__(self, directory, zoo_root: Path, **kwargs):
        super().__init__(directory, **kwargs)
        self.zoo_root = Path(zoo_root)
        self._edges: list[int] | None = None

    def _read(self, shard: int, j: int) -> ParamGraph:
        try:
            return super()._read(shard, j)
        except CorruptShardError as err:
            raise CorruptCacheError(
                f"graph cache of zoo '{self.zoo_root}' has a corrupt shard {err.path.name} "
                f"({err}); rebuild it with 'paramgraph zoo cache {self.zoo_root} --rebuild' or "
                "'paramgraph train ... --rebuild-cache'", err.path, self.zoo_root) from None

    def edge_counts(self) -> list[int]:
        """Edges per graph (computed once from the shards' row pointers)."""
        if self._edges is None:
            self._edges = super().edge_counts()
        return self._edges


def load_graphs(zoo: Zoo | str | os.PathLike, progress: bool = True,
                rebuild: bool = False) -> "GraphCache":
    """Every network of ``zoo`` as a parameter graph, in id order, converted once and cached.

    The cache is a :mod:`paramgraph.store` directory ``ZOO/cache/graphs-<key>``, written shard by
    shard (never the whole zoo in memory) under a temporary name and renamed when complete.
    Returns a :class:`GraphCache`: a sequence of the graphs (without targets), read lazily from
    memory-mapped shards. ``rebuild``: first check every shard's checksum and convert the corrupt
    ones again (:func:`repair_cache`). Raises :class:`ZooError` for a missing or corrupt zoo or a
    network that cannot be converted; reading a graph from a corrupt shard raises
    :class:`CorruptCacheError` naming it.
    """
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    cache_dir = zoo.root / "cache"
    path = cache_dir / f"graphs-{cache_key(zoo)}"
    if path.is_dir():
        try:
            store = GraphCache(path, zoo.root)
        except paramgraph.ParamGraphError:
            store = None  # no or unreadable index (an interrupted write): rebuild it below
        if store is not None and len(store) == len(zoo):
            if rebuild:
                repair_cache(zoo, progress)
                store = GraphCache(path, zoo.root)
            return store
    from tqdm import tqdm

    templates: dict = {}
    cache_dir.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=cache_dir))
    try:
        with threads(1):  # tiny tensors: one thread is several times faster
            graphs = (convert_network(zoo, i, templates)
                      for i in tqdm(range(len(zoo)), unit="net", desc=f"convert {zoo.root}",
                                    disable=not progress))
            write_store(graphs, tmp, shard_size=SHARD_SIZE)
        for old in cache_dir.glob("graphs-*"):  # stale caches of an earlier zoo or version
            if old.name != path.name:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            # Another process (a parallel training run) converted the same zoo at the same time
            # and renamed its cache first: the two are identical, keep that one.
            if not (path / "index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return GraphCache(path, zoo.root)


def verify_cache(zoo: Zoo | str | os.PathLike) -> list[Path]:
    """The corrupt shard files of the zoo's current graph cache (empty: all good). Raises
    :class:`ZooError` if the zoo has no cache yet."""
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    try:
        store = GraphStore(cache_path(zoo), verify_on_read=False)
    except paramgraph.ParamGraphError as err:
        raise ZooError(f"zoo '{zoo.root}' has no usable graph cache ({err}); it is built by "
                       f"'paramgraph zoo cache {zoo.root}' or the first training run") from None
    return store.verify()


def repair_cache(zoo: Zoo | str | os.PathLike, progress: bool = True) -> list[Path]:
    """Convert the networks of every corrupt shard of the zoo's graph cache again and rewrite
    those shards (the others are kept). Builds the cache if there is none. Returns the rebuilt
    shard files."""
    from paramgraph.store import rewrite_shard
    from tqdm import tqdm

    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    path = cache_path(zoo)
    try:
        store = GraphStore(path, verify_on_read=False)
    except paramgraph.ParamGraphError:
        load_graphs(zoo, progress)  # none or an unreadable index: build it whole
        return [path]
    bad = store.verify()
    names = {p.name for p in bad}
    templates: dict = {}
    for k, info in enumerate(store.index["shards"]):
        if info["file"] not in names:
            continue
        ids = range(store.starts[k], store.starts[k + 1])
        with threads(1):
            graphs = [convert_network(zoo, i, templates)
                      for i in tqdm(ids, unit="net", desc=f"rebuild {info['file']}",
                                    disable=not progress)]
        rewrite_shard(path, k, graphs)
    return bad


def targets(zoo: Zoo, target: "str | Objective") -> Tensor:
    """The per-network target of ``zoo`` for ``target``, read by the task whose target it is
    (:meth:`Objective.targets <paramgraph.tasks.objectives.Objective.targets>`), or by the
    (configured, fitted) task ``target`` itself.

    ``test_acc``: ``[n]`` float test accuracies (hetero/cnn zoos); ``label``: ``[n]`` long digit
    classes (inr zoos); ``dilate``: ``[n, side*side]`` float dilated images (inr zoos). Raises
    :class:`TaskError` for an unknown target or one the zoo does not have.
    """
    if isinstance(target, Objective):
        return target.targets(zoo)
    return objective_of_target(target).targets(zoo)


class ZooDataset(Dataset):
    """The graphs of one split of a zoo, each with its target ``y`` and id ``net_id``.

    ``zoo``: a :class:`~paramgraph.tasks.zoo.Zoo` or its directory. ``split``: a split name of the zoo
    (``None``: every network). ``target``: a target name or a task, see :func:`targets` (``None``:
    no ``y``). ``graphs``:
    already loaded graphs of the whole zoo (to share them between splits). ``y`` of one graph has
    shape ``[1]`` (accuracy, label) or ``[1, side*side]`` (edited image): a batch's ``y`` is ``[B]``
    or ``[B, side*side]``. Raises :class:`ZooError`/:class:`TaskError` for a bad zoo,
    split or target.
    """

    def __init__(self, zoo: Zoo | str | os.PathLike, split: str | None = None,
                 target: "str | Objective | None" = None, graphs: list[ParamGraph] | None = None,
                 progress: bool = True):
        self.zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
        self.ids = list(range(len(self.zoo))) if split is None else list(self.zoo.split(split))
        self.split_name = split
        self.target = target
        self.graphs = graphs if graphs is not None else load_graphs(self.zoo, progress)
        if len(self.graphs) != len(self.zoo):
            raise TaskError(f"{len(self.graphs)} graphs given for a zoo of {len(self.zoo)}")
        self._y = targets(self.zoo, target) if target is not None else None
        # net id -> the metanet's tree prior's out-of-fold prediction (training networks of a
        # run with a prior, paramgraph.tasks.prior); each graph then carries it as prior_offset
        self.prior_offsets: dict[int, float] | None = None
        # (key, net id -> GaugeInputs or None): a quasi metanet's gauge inputs per graph
        # (attach_gauge_inputs); each graph then carries them as the gauge_* fields
        self.gauge_inputs: tuple[int, dict] | None = None
        self._read_graphs: dict[int, ParamGraph] = {}  # _stored
        super().__init__(None)

    def len(self) -> int:
        return len(self.ids)

    def get(self, idx: int) -> ParamGraph:
        i = self.ids[idx]
        g = self.graphs[i]
        # a store reads a new graph object each time; shared graphs get a shallow copy, so that
        # targets do not leak into them
        out = g if isinstance(self.graphs, GraphStore) else g.with_values(g.edge_value,
                                                                          g.node_value)
        for key, value in self._extra_fields(i, g.num_nodes).items():
            setattr(out, key, value)
        return out

    def _stored(self, i: int) -> ParamGraph:
        """Network ``i``'s graph as stored, read once: a store builds a new graph object at
        every read (~70 us, 64 per batch); the object is kept, its tensors stay views of the
        store's mapped files. Never modified (:meth:`get` hands out copies)."""
        if not isinstance(self.graphs, GraphStore):
            return self.graphs[i]
        g = self._read_graphs.get(i)
        if g is None:
            g = self._read_graphs[i] = self.graphs[i]
        return g

    def _extra_fields(self, i: int, num_nodes: int) -> dict[str, Tensor]:
        """What this data set adds to network ``i``'s stored graph: its id, target, tree-prior
        offset and gauge inputs, where it has them."""
        out = {"net_id": torch.tensor([i])}
        if self._y is not None:
            out["y"] = self._y[i : i + 1]
        if self.prior_offsets is not None:
            out["prior_offset"] = torch.tensor([self.prior_offsets[i]], dtype=torch.float64)
        if self.gauge_inputs is not None:
            out.update(_gauge_fields(*self.gauge_inputs, i, num_nodes))
        return out

    def collate(self, idx: Sequence[int]) -> Batch:
        """The batch of items ``idx``: what a PyG ``DataLoader`` makes of ``[get(k) for k in
        idx]``, field for field (``to_data_list`` included), without a shallow copy of every
        graph to hang its fields on (64 such copies took 9 ms of a ~260 ms training step on
        small graphs, issue 18): the stored graphs are batched as they are, and the fields of
        :meth:`_extra_fields` are set on the batch, one concatenation each."""
        nets = [self.ids[k] for k in idx]
        batch = Batch.from_data_list([self._stored(i) for i in nets])
        extra = [self._extra_fields(i, n) for i, n in zip(nets, _nodes_per_graph(batch),
                                                          strict=True)]
        for key in extra[0]:
            _set_batch_field(batch, key, [fields[key] for fields in extra])
        return batch

    def attach_gauge_inputs(self, net, batch_size: int = 128) -> None:
        """Compute ``net``'s gauge inputs (:meth:`~paramgraph.models.MetaNet.gauge_inputs`:
        the exact section and kappa's features, which training does not change) once per graph;
        :meth:`get` then hands them out with every graph, and a training or evaluation step
        reads them instead of computing the section again. Identical results: the same
        computation, per graph instead of per batch. A graph with attention heads gets a key no
        metanet has, so a batch that holds one computes its gauge in the step, as before.
        Clears the cache for a metanet without a gauge."""
        key = net.gauge_input_key()
        if key is None:
            self.gauge_inputs = None
            return
        table: dict = {}
        ids = sorted(set(self.ids))
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                batch, st = prepare(Batch.from_data_list([self._stored(i) for i in chunk]))
                if st.heads is None:
                    table.update(zip(chunk, _split_inputs(net.gauge_inputs(batch, st), batch),
                                     strict=True))
                    continue
                for i in chunk:  # attention somewhere in the chunk: graph by graph
                    one, st1 = prepare(self._stored(i))
                    table[i] = None if st1.heads is not None else net.gauge_inputs(one, st1)
        self.gauge_inputs = (key, table)

    @property
    def rows(self) -> list[dict]:
        """The metadata rows of this split's networks, in order."""
        return [self.zoo.rows[i] for i in self.ids]

    def edge_counts(self) -> list[int]:
        """The number of edges of each graph of this data set, in order (for balancing work)."""
        if hasattr(self.graphs, "edge_counts"):
            every = self.graphs.edge_counts()
            return [every[i] for i in self.ids]
        return [int(self.graphs[i].edge_index.shape[1]) for i in self.ids]


def _nodes_per_graph(batch: Batch) -> list[int]:
    return (batch.ptr[1:] - batch.ptr[:-1]).tolist()


def _split_inputs(inputs, batch) -> list:
    """A batch's gauge inputs cut into those of its graphs."""
    counts = _nodes_per_graph(batch)
    return [GaugeInputs(f, x) for f, x in zip(inputs.factor.split(counts),
                                             inputs.features.split(counts), strict=True)]


def _gauge_fields(key: int, table: dict, i: int, num_nodes: int) -> dict[str, Tensor]:
    """Network ``i``'s cached gauge inputs as graph fields (:data:`GAUGE_INPUT_FIELDS`), or,
    where it has none (attention), fields of the right shape under the key -1, which no metanet
    reads."""
    inputs = table.get(i)
    if inputs is None:
        inputs = GaugeInputs(torch.full((num_nodes,), float("nan"), dtype=torch.float64),
                             torch.full((num_nodes, KAPPA_FEATURES), float("nan"),
                                        dtype=torch.float64))
        key = -1
    factor, features, key_field = GAUGE_INPUT_FIELDS
    return {factor: inputs.factor, features: inputs.features, key_field: torch.tensor([key])}


def _set_batch_field(batch: Batch, key: str, parts: list[Tensor]) -> None:
    """Set field ``key`` of ``batch`` to its graphs' ``parts`` concatenated, with the slices
    PyG's ``Batch.from_data_list`` would record (nothing added between graphs), so that
    ``to_data_list`` gives every graph its part back."""
    sizes = torch.tensor([0] + [p.shape[0] for p in parts])
    batch[key] = torch.cat(parts)
    batch._slice_dict[key] = torch.cumsum(sizes, 0)
    batch._inc_dict[key] = torch.zeros(len(parts), dtype=torch.long)


def cache_path(zoo: Zoo) -> Path:
    """The directory of the zoo's current graph cache (it may not exist yet)."""
    return zoo.root / "cache" / f"graphs-{cache_key(zoo)}"
