"""The zoo kinds ``paramgraph zoo make`` draws and their generation defaults. No torch import: the
command line's choices and help read them. Each kind's recipe (how its networks are made) is
registered under the same name in :data:`paramgraph.tasks.zoo.RECIPES`."""

KINDS = ("hetero", "cnn", "inr")
DEFAULT_CKPTS = 4  # checkpoints kept per training run (hetero, cnn)
INR_STEPS = 500  # Adam steps per SIREN fit
INR_INITS = ("shared", "independent")  # SIRENs start from one shared initialisation, or one each
IMPORTED = "imported"  # the kind of a zoo made by 'paramgraph zoo import' (no recipe: not drawn)
IMPORT_FORMATS = ("checkpoints", "pgraph", "small-cnn-zoo")  # what 'paramgraph zoo import' reads
