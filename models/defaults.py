"""The metanet's modes and default size, shared by ``MetaNet``, the training config and the command line
(no torch import: ``paramgraph train --help`` reads it). The best settings measured on the cnn and
hetero zoos (README, "What makes the gauge pay"); the training config's weight decay lives here too,
as the command line and ``TrainConfig`` share it."""

HIDDEN = 32  # feature width
LAYERS = 3  # message-passing rounds
WEIGHT_DECAY = 0.1  # AdamW; 0.01 overfits quasi (cnn zoo, 3 seeds: 0.723 vs 0.744 Kendall tau)
MODES = ("perm", "strict", "quasi")  # see paramgraph.models.metanet
