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
``inr-edit``        inr zoo; a weight head edits the SIREN so that it draws the digit dilated
                    (3x3 cross, see :func:`paramgraph.tasks.inr.dilate`). The edited SIREN is run on the
                    8x8 pixel grid straight from the head's output values
                    (:func:`paramgraph.tasks.inr.siren_forward_from_batch`, differentiable), and loss and
                    score are the mean squared error to the dilated image, in function space.

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
    predicted-against-true plot of a prediction in [0, 1] (``None``: no such plot).
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

    def check_zoo(self, zoo) -> None:
        """Raise :class:`TaskError` if ``zoo`` cannot serve this task."""
        if zoo.kind not in self.zoo_kinds:
            raise TaskError(f"task '{self.name}' needs a {' or '.join(self.zoo_kinds)} zoo; "
                            f"'{zoo.root}' is a {zoo.kind} zoo")
        self.hidden(zoo)

    def hidden(self, zoo) -> list[int] | None:
        """What :meth:`predict` needs besides the metanet (its ``hidden`` argument): the SIREN
        hidden widths for a task that runs edited SIRENs, else ``None``."""
        return None

    def targets(self, zoo) -> Tensor:
        """The per-network target of every network of ``zoo``, in id order."""
        raise NotImplementedError

    def _column(self, zoo, key: str, hint: str) -> list:
        """Column ``key`` of the zoo's metadata table; :class:`TaskError` with ``hint`` if a row
        lacks it."""
        if any(key not in r for r in zoo.rows):
            raise TaskError(f"zoo '{zoo.root}' ({zoo.kind}) has no '{key}' for target "
                            f"'{self.target}'; {hint}")
        return [r[key] for r in zoo.rows]

    def predict(self, net, batch, hidden: list[int] | None = None, structure=None) -> Tensor:
        """The metanet's prediction for ``batch``: ``[B]`` accuracies, ``[B, 10]`` logits or
        ``[B, 64]`` edited-SIREN images. Differentiable. ``structure``: the batch's
        ``GraphStructure`` from ``models.prepare`` (read on the host before the batch moved)."""
        return self.from_output(net(batch) if structure is None else net(batch, structure),
                                hidden)

    def from_output(self, out, hidden: list[int] | None) -> Tensor:
        """The prediction made of the metanet's output ``out``."""
        raise NotImplementedError

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """The training loss of ``pred`` against the batch targets ``y`` (default: MSE)."""
        import torch.nn.functional as F

        return F.mse_loss(pred, y.to(pred.dtype))

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
    zoo_kinds = ("hetero", "cnn")
    out_dim = 1
    select = "kendall_tau"
    higher = True
    scatter_label = "true test accuracy"

    def targets(self, zoo) -> Tensor:
        import torch

        acc = self._column(zoo, "test_acc", "accuracy targets need a hetero or cnn zoo")
        return torch.tensor([float(a) for a in acc], dtype=torch.float32)

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


class InrClass(Objective):
    name = "inr-class"
    target = "label"
    zoo_kinds = ("inr",)
    out_dim = 10
    select = "accuracy"
    higher = True

    def targets(self, zoo) -> Tensor:
        import torch

        labels = self._column(zoo, "label", _INR_TARGETS)
        return torch.tensor([int(c) for c in labels], dtype=torch.long)

    def from_output(self, out, hidden):
        return out

    def loss(self, pred, y):
        import torch.nn.functional as F

        return F.cross_entropy(pred, y)

    def metrics(self, pred, y):
        from .metrics import accuracy

        return {"accuracy": accuracy(pred, y)}

    def fit_baseline(self, x_train, y_train, x_eval, seed):
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
        full = np.zeros((len(x_eval), self.out_dim))  # classes absent from training score 0
        full[:, model.classes_] = model.predict_proba(x_eval)
        return full


class InrEdit(Objective):
    name = "inr-edit"
    target = "dilate"
    zoo_kinds = ("inr",)
    head = "weights"
    select = "mse"
    higher = False
    references = ("identity_mse",)

    def hidden(self, zoo) -> list[int]:
        return siren_hidden(zoo)

    def targets(self, zoo) -> Tensor:
        from .digits import images
        from .inr import dilate

        self._column(zoo, "label", _INR_TARGETS)
        x, _ = images()
        return dilate(x[[int(r["image_index"]) for r in zoo.rows]])

    def from_output(self, out, hidden):
        from .inr import siren_forward_from_batch

        return siren_forward_from_batch(out, hidden)

    def metrics(self, pred, y):
        from .metrics import mse

        return {"mse": mse(pred, y)}

    def reference_scores(self, dataset, hidden):
        """``identity_mse``: the error of leaving every SIREN unedited."""
        return {"identity_mse": identity_edit_mse(dataset, hidden)}

    def fit_baseline(self, x_train, y_train, x_eval, seed):
        """One regressor per pixel of the dilated image."""
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingRegressor

        return np.stack([HistGradientBoostingRegressor(random_state=seed, max_iter=50)
                         .fit(x_train, y_train[:, p]).predict(x_eval)
                         for p in range(y_train.shape[1])], 1)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (Generalization(), InrClass(), InrEdit())}


def get_objective(name: str) -> Objective:
    """The :class:`Objective` called ``name``; raises :class:`TaskError` for an unknown task."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise TaskError(f"unknown task '{name}' (known: {', '.join(OBJECTIVES)})") from None


def objective_of_target(target: str) -> Objective:
    """The :class:`Objective` whose target is called ``target``; raises :class:`TaskError` for
    an unknown target."""
    for objective in OBJECTIVES.values():
        if objective.target == target:
            return objective
    known = ", ".join(o.target for o in OBJECTIVES.values())
    raise TaskError(f"unknown target '{target}' (known: {known})")


def siren_hidden(zoo) -> list[int]:
    """The hidden widths shared by every SIREN of an inr zoo; raises :class:`TaskError` if the
    zoo mixes SIREN architectures or holds something else."""
    specs = {tuple(r["spec"].get("hidden", ())) for r in zoo.rows if r["spec"].get("family") == "siren"}
    if len(specs) != 1 or any(r["spec"].get("family") != "siren" for r in zoo.rows):
        raise TaskError(f"zoo '{zoo.root}' must hold SIRENs of one architecture for INR editing")
    return list(next(iter(specs)))


def identity_edit_mse(dataset, hidden: list[int]) -> float:
    """The error of *not* editing: each SIREN's own output against its dilated target."""
    import torch
    from torch_geometric.loader import DataLoader

    from .inr import siren_forward_from_batch

    err, n = 0.0, 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=128):
            out = siren_forward_from_batch(batch, hidden)
            err += float((out - batch.y).pow(2).sum())
            n += out.numel()
    return err / max(n, 1)
