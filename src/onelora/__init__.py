"""onelora: 1LoRA (summation compression) and its competitors, and the paper's reproduction suite.

The package's parts, in layers: a part imports only from its own layer or those before it, never after, and no
two modules import each other, directly or round a circle (imports inside functions count too).
`tests/test_layers.py` reads every import and holds the package to `LAYERS`; `scripts/` and `run.py` sit above all.
"""

__version__ = "0.1.0"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "assets"),  # what every layer shares: the errors a user can fix, the packaged source model
    ("peft",),  # the library: 1LoRA and the methods it is compared with, on any PyTorch model
    ("models",),  # building the real transformers/diffusers/timm models from a config
    ("data", "metrics"),  # the data sets (DataModules) and the tasks' metrics
    ("tasks",),  # one LightningModule base and the paper's tasks
    ("run",),  # one run's lifecycle: lock, record, build, fit, export; checkpoints, callbacks, strategies
    ("costs", "report"),  # what runs cost (memory, time, ops) and what they found (tables, plots, the README's)
    ("commands",),  # what the command lines call: a run or its dry run, a sweep of a manifest
)
