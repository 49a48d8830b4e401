"""The metanet's modes and default size, shared by ``MetaNet``, the training config and the command line
(no torch import: ``paramgraph train --help`` reads it). The best settings measured on the cnn and
hetero zoos (README, "What makes the gauge pay")."""

HIDDEN = 32  # feature width
LAYERS = 3  # message-passing rounds
MODES = ("perm", "strict", "quasi")  # see paramgraph.models.metanet
