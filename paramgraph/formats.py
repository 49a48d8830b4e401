"""Names of the file formats paramgraph reads and writes (no torch import: the command line's help
text uses them)."""

GRAPH_FORMAT = "paramgraph-graph"
# 2: edge_index stored as int32 (version 1 stored int64 ids, narrowed on disk); this version
# reads both, and a paramgraph that reads only 1 is told to upgrade instead of tripping over
# the dtype
GRAPH_FORMAT_VERSION = 2
GRAPH_SUFFIX = ".pgraph"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".pt2", ".bin", ".ckpt")
