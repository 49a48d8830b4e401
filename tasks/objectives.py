"""The learning tasks: what a metanet predicts, its loss, how it is scored, and what the
statistics baseline fits for it. One :class:`Objective` subclass per task, one instance of each
in :data:`OBJECTIVES`; training, evaluation, the baseline, the data sets' targets and the command
line's ``--task`` choices all look tasks up there.

``generalization``  hetero or cnn zoo; an invariant head with one output predicts the network's
                    test accuracy as ``sigmoid(output)`` (accuracies lie in [0, 1], and the
                    squashing keeps a few networks with extreme weights from producing huge
                    predictions that swamp the loss and R²); loss: mean squared error; scores:
                    Kendall tau (model selection), R², MSE.
``inr-class``       inr zoo; an invariant head with 10 outputs classifies the digit a SIREN
                    encodes; loss: cross-entropy; score: accuracy.
``inr-edit``        inr zoo; a weight head edits the SIREN so that it draws its image edited:
                    dilated (the default) or translated (``--target translate``, see
                    :mod:`paramgraph.tasks.inr_edits`). The edited SIREN is run on the zoo's
                    pixel grid straight from the head's output values
                    (:func:`paramgraph.tasks.inr.siren_forward_from_batch`, differentiable; with
                    output channel expansion the mean of the k edited SIRENs), and loss and
                    score are the mean squared error to the edited image, in function space.
``regression``      any zoo; ``--target COLUMN`` names a numeric column of its metadata (an
                    imported zoo's ``labels.csv``, or a made zoo's ``train_loss`` ...). The targets
                    are standardised with the training split's mean and standard deviation, so
                    the loss and the learning rate do not depend on the column's units; the
                    prediction is ``mean + std * output``. Scores: Kendall tau, R² (model
                    selection), MSE, MAE.
``classification``  any zoo; ``--target COLUMN`` names a categorical column; the classes are the
                    column's distinct values over the whole zoo, sorted. Loss: cross-entropy;
                    score: accuracy.

The two column tasks are *configured* per run (:meth:`Objective.configure` with the column,
:meth:`Objective.fitted` on the zoo); what they learn from the zoo (classes, mean and standard
deviation) is their :meth:`Objective.state`, saved in the run's ``config.json`` so that ``paramgraph
predict`` needs the run only, not the zoo.

Adding a task: subclass :class:`Objective` here and register an instance in :data:`OBJECTIVES`.

torch, numpy and scikit-learn are imported inside the methods: the command line reads
:data:`OBJECTIVES` for its choices, and ``paramgraph --help`` must not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import TaskError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

_INR_TARGETS = "INR targets need an inr zoo"


class Objective:
    """One task (see the module docstring). A subclass sets the class attributes and implements
    :meth:`targets`, :meth:`from_output`, :meth:`metrics` and :meth:`fit_baseline`.

    ``target``: the name of its per-network target (see :func:`paramgraph.tasks.data.targets`);
    ``zoo_kinds``: the zoo kinds it trains on; ``head``/``out_dim``: the metanet head
    (``"invariant"`` with ``out_dim`` outputs, or ``"weights"``); ``select``: the validation
    metric that picks the best checkpoint, ``higher`` says which way is better;
    ``references``: the scores of :meth:`reference_scores`; ``scatter_label``: the axis label of a
    predicted-against-true plot of a prediction in [0, 1] (``None``: no such plot);
    ``prior_link``: how the metanet's tree prior maps this task's target into the head's output
    (a key of :data:`paramgraph.models.prior.PRIOR_LINKS`; ``None``: the task takes no prior).
    """

    name: str
    target: str
    zoo_kinds: tuple[str, ...]
    head: str = "invariant"
    out_dim: int = 0
    select: str
    higher: bool
    references: tuple[str, ...] = ()
    scatter_label: str | None = None
    ranked: bool = False  # scored by Kendall tau on one prediction: a rank term may be added
    rank_weight: float = 0.0  # weight of that term (:meth:`with_rank_loss`)
    prior_link: str | None = None

    def model_defaults(self, mode: str) -> dict:
        """The metanet options this task trains with unless a run sets them (``MetaNet``
        keyword arguments), for metanets of ``mode``; none by default."""
        return {}

    def train_defaults(self, mode: str) -> dict:
        """The training settings (``TrainConfig`` fields named in
        ``paramgraph.models.defaults.TRAINING``) this task trains with unless a run sets them,
        for metanets of ``mode``; none by default (the values of ``TRAINING``)."""
        return {}

    def training_settings(self, mode: str) -> dict:
        """Every setting of ``TRAINING`` as this task trains metanets of ``mode`` by default:
        its :meth:`train_defaults` over the global values."""
        from paramgraph.models.defaults import TRAINING

        return {**TRAINING, **self.train_defaults(mode)}

    def check_zoo(self, zoo) -> None:
        """Raise :class:`TaskError` if ``zoo`` cannot serve this task."""
        if zoo.kind not in self.zoo_kinds:
            raise TaskError(f"task '{self.name}' needs a {' or '.join(self.zoo_kinds)} zoo; "
                            f"'{zoo.root}' is a {zoo.kind} zoo")
        self.hidden(zoo)

    def configure(self, target: str | None) -> "Objective":
        """This task for the column ``target`` (``--target``). A task with a fixed target accepts
        only its own (or ``None``); the column tasks return a configured copy."""
        if target is None or target == self.target:
            return self
        raise TaskError(f"task '{self.name}' always predicts '{self.target}'; to predict "
                        f"'{target}' use --task regression (a numeric column) or --task "
                        "classification (a categorical one)")

    def fitted(self, zoo, train_ids: list[int]) -> "Objective":
        """This task with what it learns from the zoo's targets (the column tasks: classes, the
        training split's mean and standard deviation); called once when a run starts."""
        return self

    def state(self) -> dict:
        """What :meth:`fitted` learnt, as JSON (saved in the run's ``config.json``)."""
        return {}

    def restored(self, state: dict) -> "Objective":
        """This task with a saved :meth:`state` (a run's, read back without its zoo)."""
        return self

    def prediction_columns(self, pred) -> dict[str, list]:
        """The columns ``paramgraph predict`` writes for the predictions ``pred`` of
        :meth:`predict` (one row per network): the value for regression, the class and its
        probabilities for classification."""
        raise TaskError(f"task '{self.name}' does not predict a value per network; "
                        + ("edit checkpoints with 'paramgraph edit'" if self.head == "weights"
                           else "it cannot be used with 'paramgraph predict'"))

    def hidden(self, zoo) -> list[int] | None:
        """What :meth:`predict` needs besides the metanet (its ``hidden`` argument): the SIREN
        hidden widths for a task on SIRENs (to run edited SIRENs, or to probe them), else
        ``None``."""
        return None

    def targets(self, zoo) -> Tensor:
        """The per-network target of every network of ``zoo``, in id order."""
        raise NotImplementedError

    def _column(self, zoo, key: str, hint: str) -> list:
        """Column ``key`` of the zoo's metadata table; :class:`TaskError` with ``hint`` if a row
        lacks it."""
        values = zoo.column(key)
        if any(v is None for v in values):
            raise TaskError(f"zoo '{zoo.root}' ({zoo.kind}) has no '{key}' for target "
                            f"'{self.target}'; {hint}")
        return values

    def predict(self, net, batch, hidden: list[int] | None = None, structure=None) -> Tensor:
        """The metanet's prediction for ``batch``: ``[B]`` accuracies, ``[B, 10]`` logits or
        ``[B, 64]`` edited-SIREN images. Differentiable. ``structure``: the batch's
        ``GraphStructure`` from ``models.prepare`` (read on the host before the batch moved).
        A metanet built with ``probes`` gets this task's probe features of the batch."""
        points = getattr(net, "probes", 0)  # (the data-parallel wrapper passes it on)
        kwargs = {"probes": self.probe_features(batch, hidden, points)} if points else {}
        args = (batch,) if structure is None and not kwargs else (batch, structure)
        return self.from_output(net(*args, **kwargs), hidden)

    def probe_features(self, batch, hidden: list[int] | None, points: int) -> Tensor:
        """``[N, points]``: each neuron's values at ``points`` fixed inputs (tasks on SIRENs)."""
        raise TaskError(f"task '{self.name}' has no probe features; they are made for the "
                        "SIREN tasks (inr-class, inr-edit)")

    def from_output(self, out, hidden: list[int] | None) -> Tensor:
        """The prediction made of the metanet's output ``out``."""
        raise NotImplementedError

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """The training loss of ``pred`` against the batch targets ``y`` (default: MSE)."""
        import torch.nn.functional as F

        return F.mse_loss(pred, y.to(pred.dtype))

    def with_rank_loss(self, weight: float) -> "Objective":
        """This task training with the pairwise rank term of :mod:`paramgraph.tasks.losses`
        added with ``weight`` (0: the plain :meth:`loss`)."""
        import copy

        if weight and not self.ranked:
            raise TaskError(f"--rank-loss needs a task scored by Kendall tau on one prediction "
                            f"(generalization, regression); '{self.name}' is not")
        new = copy.copy(self)
        new.rank_weight = float(weight)
        return new

    def training_loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """What training minimises on one batch: :meth:`loss`, plus :meth:`rank_term` where
        asked (data-parallel training adds the rank term over the whole global batch)."""
        loss = self.loss(pred, y)
        return loss + self.rank_term(pred, y) if self.rank_weight else loss

    def rank_term(self, pred: Tensor, y: Tensor) -> Tensor:
        """The weighted pairwise rank term over the batch ``pred``, ``y``, in :meth:`loss`'s
        units (every pair of the batch enters it: it is not a mean of per-graph terms)."""
        from .losses import pairwise_rank_loss

        return self.rank_weight * self.loss_unit() * pairwise_rank_loss(pred, y)

    def loss_unit(self) -> float:
        """The factor that puts a squared error in target units into :meth:`loss`'s units."""
        return 1.0

    def metrics(self, pred, y) -> dict[str, float]:
        """Every score of this task, as a dict of floats (tensors or arrays)."""
        raise NotImplementedError

    def improves(self, new: float, old: float | None) -> bool:
        """Whether the ``select`` score ``new`` beats ``old`` (a NaN never does)."""
        from .metrics import beats

        return beats(new, old, self.higher)

    def reference_scores(self, dataset, hidden: list[int] | None) -> dict[str, float]:
        """The scores (named in ``references``) of a do-nothing reference on ``dataset``."""
        return {}

    def fit_baseline(self, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray,
                     seed: int) -> np.ndarray:
        """Fit the statistics baseline's model(s) on weight statistics and predict ``x_eval``."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, float]) -> str:
        """The scores in a plot title."""
        return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


class Generalization(Objective):
    name = "generalization"
    target = "test_acc"
    zoo_kinds = ("hetero", "cnn", "imported")
    out_dim = 1
    select = "kendall_tau"
    higher = True
    scatter_label = "true test accuracy"
    ranked = True
    prior_link = "logit"  # the tree prior predicts accuracies; the head's output is a logit

    # The four levers measured together on both held-out halves of the cnn and hetero zoos, 3
    # seeds each (README, "The four levers and hard signs as the default"): every mode gains (perm +0.028 and
    # +0.014 Kendall tau, quasi +0.003 and +0.018), and none of the four alone moved a metanet
    # by more than its seed noise.
    # The cross-fitted tree prior (models/prior.py) on top: on the cnn zoo every mode gains
    # (quasi +0.033, perm +0.049, strict +0.043 Kendall tau, 3 seeds; pooled over both halves
    # perm 0.801, quasi 0.798, the baseline 0.783), on the hetero zoo perm +0.008 and strict
    # +0.10, quasi -0.007 (within its seed spread); README, "A tree prior the GNN corrects".
    def model_defaults(self, mode: str) -> dict:
        return {"output_readout": True, "prior": True}

    def train_defaults(self, mode: str) -> dict:
        return {"weight_decay": 0.3, "ema": 0.99, "rank_loss": 1.0}

    def targets(self, zoo) -> Tensor:
        import torch

        acc = numeric_column(zoo, "test_acc", self.name)
        return torch.tensor(acc, dtype=torch.float32)

    def from_output(self, out, hidden):
        import torch

        return torch.sigmoid(out[:, 0])

    def metrics(self, pred, y):
        from .metrics import kendall_tau, mse, r2

        return {"kendall_tau": kendall_tau(pred, y), "r2": r2(pred, y), "mse": mse(pred, y)}

    def fit_baseline(self, x_train, y_train, x_eval, seed):
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(random_state=seed).fit(x_train, y_train) \
            .predict(x_eval)

    def headline(self, metrics):
        return f"tau {metrics['kendall_tau']:.3f}, R2 {metrics['r2']:.3f}"

    def prediction_columns(self, pred):
        return {self.target: [float(v) for v in pred]}


class _ClassLogits:
    """What every classification task shares: logits out of the head, cross-entropy, accuracy,
    and a gradient-boosting classifier as the baseline (mixed in before :class:`Objective`)."""

    select = "accuracy"
    higher = True

    def from_output(self, out, hidden):
        return out

    def loss(self, pred, y):
        import torch.nn.functional as F

        return F.cross_entropy(pred, y)

    def metrics(self, pred, y):
        from .metrics import accuracy

        return {"accuracy": accuracy(pred, y)}

    def fit_baseline(self, x_train, y_train, x_eval, seed):
        return fit_classifier(x_train, y_train, x_eval, seed, self.out_dim)


class _SirenProbes:
    """What the tasks on SIRENs share (mixed in before :class:`Objective`): their hidden widths
    and probe features, every neuron's values on a ``side x side`` grid of coordinates in
    ``[-1, 1]^2`` (``points = side^2``)."""

    def hidden(self, zoo) -> list[int]:
        return siren_hidden(zoo)

    def probe_features(self, batch, hidden, points):
        import math

        from .inr import grid, siren_probes

        side = math.isqrt(points)
        if side * side != points:
            raise TaskError(f"--probes {points}: SIRENs are probed on a square grid; give a "
                            "square number such as 16 or 64")
        return siren_probes(batch, hidden, grid(side))


class InrClass(_SirenProbes, _ClassLogits, Objective):
    name = "inr-class"
    target = "label"
    zoo_kinds = ("inr",)
    out_dim = 10

    def model_defaults(self, mode: str) -> dict:
        # Probe features on an 8x8 grid, and a readout of the output neuron, whose probes are
        # the image the SIREN draws: without them classification from independent
        # initialisations stays at chance (README, "INR benchmarks"). strict reads no probes.
        # Soft signs, with which it was measured (hard signs won on generalisation only).
        return {} if mode == "strict" else {"probes": 64, "output_readout": True,
                                            "soft_signs": True}

    def targets(self, zoo) -> Tensor:
        import torch

        labels = self._column(zoo, "label", _INR_TARGETS)
        return torch.tensor([int(c) for c in labels], dtype=torch.long)


    def prediction_columns(self, pred):
        return class_columns(self.target, list(range(self.out_dim)), pred)


class InrEdit(_SirenProbes, Objective):
    """Edit a SIREN so that it draws its image edited (``--target``: an edit of
    :data:`paramgraph.tasks.inr_edits.EDITS`, default ``dilate``). The edited SIREN is run on the
    zoo's pixel grid (``side``, learnt from the zoo by :meth:`fitted` and saved with the run);
    a weight head with ``copies = k`` (output channel expansion) edits into k SIRENs whose
    outputs are averaged (:mod:`paramgraph.tasks.expansion`)."""

    name = "inr-edit"
    target = "dilate"
    zoo_kinds = ("inr",)
    head = "weights"
    select = "mse"
    higher = False
    references = ("identity_mse",)
    side: int | None = None

    def configure(self, target):
        from .inr_edits import EDITS

        if target is None or target == self.target:
            return self
        if target not in EDITS:
            raise TaskError(f"task '{self.name}' edits a SIREN's image by one of "
                            f"{', '.join(EDITS)} (--target), not '{target}'")
        import copy

        new = copy.copy(self)
        new.target = target
        return new

    def fitted(self, zoo, train_ids):
        import copy

        from .inr_edits import zoo_side

        new = copy.copy(self)
        new.side = zoo_side(zoo)
        return new

    def state(self):
        return {"side": self.side}

    def restored(self, state):
        import copy

        new = copy.copy(self)
        new.side = state.get("side") or 8  # a run saved before views existed: 8x8 digits
        return new

    def targets(self, zoo) -> Tensor:
        from .inr_edits import EDITS, zoo_images

        self._column(zoo, "label", _INR_TARGETS)
        return EDITS[self.target](zoo_images(zoo))

    def from_output(self, out, hidden):
        from .expansion import siren_outputs

        return siren_outputs(out, hidden, self.side or 8)

    def metrics(self, pred, y):
        from .metrics import mse

        return {"mse": mse(pred, y)}

    def reference_scores(self, dataset, hidden):
        """``identity_mse``: the error of leaving every SIREN unedited."""
        return {"identity_mse": identity_edit_mse(dataset, hidden, self.side or 8)}

    def fit_baseline(self, x_train, y_train, x_eval, seed):
        """One regressor per pixel of the edited image."""
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingRegressor

        return np.stack([HistGradientBoostingRegressor(random_state=seed, max_iter=50)
                         .fit(x_train, y_train[:, p]).predict(x_eval)
                         for p in range(y_train.shape[1])], 1)


ANY_ZOO = ("hetero", "cnn", "inr", "imported")


class ColumnObjective(Objective):
    """A task on a column the user names with ``--target`` (see the module docstring): one
    registered instance without a column, configured per run by :meth:`configure`."""

    target: str | None = None
    zoo_kinds = ANY_ZOO

    def configure(self, target):
        if not target:
            raise TaskError(f"task '{self.name}' needs --target COLUMN: the zoo column to "
                            "predict (see 'paramgraph zoo info ZOO' for its columns)")
        if target == self.target:
            return self
        import copy

        new = copy.copy(self)
        new.target = target
        return new

    def check_zoo(self, zoo):
        super().check_zoo(zoo)
        columns = zoo.columns()
        if self.target not in columns:
            raise TaskError(f"zoo '{zoo.root}' has no column '{self.target}' (its columns: "
                            f"{', '.join(columns) or 'none'})")


class Regression(ColumnObjective):
    name = "regression"
    out_dim = 1
    select = "r2"
    higher = True
    ranked = True
    mean: float = 0.0
    std: float = 1.0
    fit_done: bool = False

    @property
    def scatter_label(self):
        return f"true {self.target}"

    def fitted(self, zoo, train_ids):
        import copy
        import statistics

        values = numeric_column(zoo, self.target, self.name)
        if self.fit_done:  # a trained run's scale stays what its metanet learnt with
            return self
        train = [values[i] for i in train_ids] or values
        new = copy.copy(self)
        new.fit_done = True
        new.mean = float(statistics.fmean(train))
        std = statistics.pstdev(train) if len(train) > 1 else 0.0
        new.std = float(std) if std > 0 else 1.0  # a constant column: unit scale
        return new

    def state(self):
        return {"mean": self.mean, "std": self.std}

    def restored(self, state):
        import copy

        if not state:
            return self
        new = copy.copy(self)
        new.mean, new.std = float(state["mean"]), float(state["std"])
        new.fit_done = True
        return new

    def targets(self, zoo):
        import torch

        return torch.tensor(numeric_column(zoo, self.target, self.name), dtype=torch.float32)

    def from_output(self, out, hidden):
        return self.mean + self.std * out[:, 0]

    def loss(self, pred, y):
        import torch.nn.functional as F

        # in standard deviations of the training targets: the same loss for any unit
        return F.mse_loss(pred, y.to(pred.dtype)) * self.loss_unit()

    def loss_unit(self):
        return 1.0 / (self.std * self.std)

    def metrics(self, pred, y):
        from .metrics import kendall_tau, mae, mse, r2

        return {"kendall_tau": kendall_tau(pred, y), "r2": r2(pred, y), "mse": mse(pred, y),
                "mae": mae(pred, y)}

    def fit_baseline(self, x_train, y_train, x_eval, seed):
        return Generalization.fit_baseline(self, x_train, y_train, x_eval, seed)

    def headline(self, metrics):
        return f"tau {metrics['kendall_tau']:.3f}, R2 {metrics['r2']:.3f}"

    def prediction_columns(self, pred):
        return {self.target: [float(v) for v in pred]}


class Classification(_ClassLogits, ColumnObjective):
    name = "classification"
    classes: tuple = ()

    @property
    def out_dim(self) -> int:  # type: ignore[override]
        return len(self.classes)

    def fitted(self, zoo, train_ids):
        import copy

        values = categorical_column(zoo, self.target)
        classes = tuple(sorted(set(values), key=_class_order))
        if len(classes) < 2:
            raise TaskError(f"column '{self.target}' of zoo '{zoo.root}' has one value only "
                            f"({classes[0]!r}); classification needs at least two classes")
        if self.classes:  # a run's saved classes: the zoo may not add new ones
            unknown = [c for c in classes if c not in self.classes]
            if unknown:
                raise TaskError(f"zoo '{zoo.root}' has classes the run was not trained on in "
                                f"column '{self.target}': {', '.join(map(str, unknown[:5]))}")
            return self
        new = copy.copy(self)
        new.classes = classes
        return new

    def state(self):
        return {"classes": list(self.classes)}

    def restored(self, state):
        import copy

        if not state:
            return self
        new = copy.copy(self)
        new.classes = tuple(state["classes"])
        return new

    def targets(self, zoo):
        import torch

        index = {c: k for k, c in enumerate(self.classes)}
        return torch.tensor([index[v] for v in categorical_column(zoo, self.target)],
                            dtype=torch.long)


    def prediction_columns(self, pred):
        return class_columns(self.target, list(self.classes), pred)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (Generalization(), InrClass(), InrEdit(),
                                                        Regression(), Classification())}


def get_objective(name: str, target: str | None = None) -> Objective:
    """The :class:`Objective` called ``name`` for the column ``target`` (``--target``; ``None``:
    the task's own target); raises :class:`TaskError` for an unknown task or a target it cannot
    have."""
    try:
        objective = OBJECTIVES[name]
    except KeyError:
        raise TaskError(f"unknown task '{name}' (known: {', '.join(OBJECTIVES)})") from None
    return objective.configure(target)


def objective_of_target(target: str) -> Objective:
    """The :class:`Objective` whose fixed target is called ``target``; raises :class:`TaskError`
    for an unknown target (a column task is reached through :func:`get_objective`)."""
    for objective in OBJECTIVES.values():
        if objective.target is not None and objective.target == target:
            return objective
    known = ", ".join(o.target for o in OBJECTIVES.values() if o.target is not None)
    raise TaskError(f"unknown target '{target}' (known: {known}; any other column: "
                    "--task regression or classification with --target)")


def _row_name(zoo, i: int) -> str:
    """How an error names network ``i``: its labels.csv line and file for an imported zoo."""
    row = zoo.rows[i]
    if "labels_line" in row:
        return f"{row.get('labels_file', 'labels.csv')} line {row['labels_line']} " \
               f"({row.get('source', '')})"
    return f"network {i}"


def numeric_column(zoo, column: str, task: str) -> list[float]:
    """The numbers in ``column`` for every network of ``zoo``; :class:`TaskError` naming the
    first row whose value is missing, not a number or not finite."""
    import math

    out = []
    for i, v in enumerate(zoo.column(column)):
        if v is None or isinstance(v, bool):
            raise TaskError(f"zoo '{zoo.root}': {_row_name(zoo, i)} has no value in column "
                            f"'{column}'; fill it in and import again")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise TaskError(f"zoo '{zoo.root}': {_row_name(zoo, i)} has {v!r} in column "
                            f"'{column}', not a number; task '{task}' needs a numeric column "
                            "(--task classification predicts categories)") from None
        if not math.isfinite(x):
            raise TaskError(f"zoo '{zoo.root}': {_row_name(zoo, i)} has {v!r} in column "
                            f"'{column}', not a finite number")
        out.append(x)
    return out


def categorical_column(zoo, column: str) -> list:
    """The values in ``column`` for every network of ``zoo`` (classes); :class:`TaskError`
    naming the first row without one, or for a column of fractional numbers (a regression
    target)."""
    values = zoo.column(column)
    for i, v in enumerate(values):
        if v is None:
            raise TaskError(f"zoo '{zoo.root}': {_row_name(zoo, i)} has no value in column "
                            f"'{column}'; fill it in and import again")
    if any(isinstance(v, float) and not float(v).is_integer() for v in values):
        raise TaskError(f"column '{column}' of zoo '{zoo.root}' holds fractional numbers, not "
                        "categories; use --task regression for it")
    return values


def _class_order(c):
    """Numbers first in numeric order, then text in alphabetical order."""
    return (0, c, "") if isinstance(c, (int, float)) and not isinstance(c, bool) else (1, 0, str(c))


def fit_classifier(x_train, y_train, x_eval, seed: int, classes: int):
    """The statistics baseline of a classification: ``[n, classes]`` probabilities of gradient
    boosting (a class absent from the training split scores 0)."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
    full = np.zeros((len(x_eval), classes))
    full[:, model.classes_] = model.predict_proba(x_eval)
    return full


def class_columns(target: str, classes: list, logits) -> dict[str, list]:
    """``paramgraph predict``'s columns of a classification: the most probable class, then one
    probability column ``p_<class>`` per class."""
    import torch

    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)
    out: dict[str, list] = {target: [classes[int(k)] for k in probs.argmax(1)]}
    for k, c in enumerate(classes):
        out[f"p_{c}"] = [float(p) for p in probs[:, k]]
    return out


def siren_hidden(zoo) -> list[int]:
    """The hidden widths shared by every SIREN of an inr zoo; raises :class:`TaskError` if the
    zoo mixes SIREN architectures or holds something else."""
    specs = {tuple(r["spec"].get("hidden", ())) for r in zoo.rows if r["spec"].get("family") == "siren"}
    if len(specs) != 1 or any(r["spec"].get("family") != "siren" for r in zoo.rows):
        raise TaskError(f"zoo '{zoo.root}' must hold SIRENs of one architecture for INR editing")
    return list(next(iter(specs)))


def identity_edit_mse(dataset, hidden: list[int], side: int = 8) -> float:
    """The error of *not* editing: each SIREN's own output (on the ``side`` x ``side`` grid)
    against its edited target."""
    import torch
    from torch_geometric.loader import DataLoader

    from .inr import grid, siren_forward_from_batch

    err, n = 0.0, 0
    coords = grid(side)
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=128):
            out = siren_forward_from_batch(batch, hidden, coords)
            err += float((out - batch.y).pow(2).sum())
            n += out.numel()
    return err / max(n, 1)
