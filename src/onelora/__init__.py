"""onelora: 1LoRA (summation compression) and its competitors, and the paper's reproduction suite."""

__version__ = "0.1.0"
