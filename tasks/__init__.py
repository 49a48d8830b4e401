"""The task layer: zoos, objectives, training, the command line (see ARCHITECTURE.md).

It registers its bundled data set with the graph-wise edit commands of
:mod:`paramgraph.cli_edit` (``--eval digits``/``--data digits``); the loader is imported only when
a command uses it.
"""

from paramgraph.cli_edit import register_dataset

register_dataset("digits", "paramgraph.tasks.digits:dataset",
                 "scikit-learn's bundled 8x8 digits: train 1,437 images, test 360")
