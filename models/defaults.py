"""The metanet's modes and default size, shared by ``MetaNet``, the training config and the command line
(no torch import: ``paramgraph train --help`` reads it). The best settings measured on the cnn and
hetero zoos (README, "What makes the gauge pay"); the training settings a task may override live
here too, as the command line and ``TrainConfig`` share them."""

HIDDEN = 32  # feature width
LAYERS = 3  # message-passing rounds
# Widest hidden edge features by default (MetaNet(edge_width=None) is min(hidden, EDGE_WIDTH)):
# at hidden 64, 32-wide edges train ~1.5x faster per step and ranked as well as 64-wide ones; at
# hidden 32, 16-wide edges cost quasi 0.010 Kendall tau (cnn zoo, 3 seeds; README, "Narrower
# edge features")
EDGE_WIDTH = 32
WEIGHT_DECAY = 0.1  # AdamW; 0.01 overfits quasi (cnn zoo, 3 seeds: 0.723 vs 0.744 Kendall tau)
# The training settings a task may set for itself (tasks.objectives.Objective.train_defaults) and
# their values for a task that does not: AdamW weight decay, decay of the evaluated moving
# average of the weights (0: off), weight of the pairwise rank term (0: off).
TRAINING = {"weight_decay": WEIGHT_DECAY, "ema": 0.0, "rank_loss": 0.0}
MODES = ("perm", "strict", "quasi")  # see paramgraph.models.metanet
