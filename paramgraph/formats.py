"""Names of the file formats paramgraph reads and writes (no torch import: the command line's help
text uses them)."""

GRAPH_FORMAT = "paramgraph-graph"
GRAPH_FORMAT_VERSION = 1
GRAPH_SUFFIX = ".pgraph"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".pt2", ".bin", ".ckpt")
