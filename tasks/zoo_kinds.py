"""The zoo kinds ``paramgraph zoo make`` draws and their generation defaults. No torch import: the
command line's choices and help read them. Each kind's recipe (how its networks are made) is
registered under the same name in :data:`paramgraph.tasks.zoo.RECIPES`."""

KINDS = ("hetero", "cnn", "inr")
DEFAULT_CKPTS = 4  # checkpoints kept per training run (hetero, cnn)
INR_STEPS = 300  # Adam steps per SIREN fit (300 at lr 3e-3 fit 16x16 views to ~31 dB PSNR)
INR_LR = 3e-3  # their learning rate (cosine-decayed to 1%); 1e-3 fits 16x16 views 6 dB worse
INR_SIDE = 16  # the views' resolution (pixels a side)
INR_INITS = ("shared", "independent")  # SIRENs start from one shared initialisation, or one each
IMPORTED = "imported"  # the kind of a zoo made by 'paramgraph zoo import' (no recipe: not drawn)
IMPORT_FORMATS = ("checkpoints", "pgraph", "small-cnn-zoo")  # what 'paramgraph zoo import' reads

# The split sets a run trains and is scored under (``--splits``): the run's train/val/test -> the
# zoo's split names. "ood" holds the ViTs of a hetero zoo out; "swap" keeps the epoch that scores
# best on the zoo's test split and scores the zoo's validation split, a second held-out estimate
# from the same training split, disjoint from the first.
SPLIT_SETS = {
    "id": {"train": "train", "val": "val", "test": "test"},
    "ood": {"train": "ood_train", "val": "ood_val", "test": "ood_test"},
    "swap": {"train": "train", "val": "test", "test": "val"},
}
