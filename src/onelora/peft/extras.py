"""Methods without an adapter: they unfreeze (or add) parameters of the model itself.

    bias   (= bitfit)  y = W0 x + β          β trained; a zero β is added where a layer has none
    gamma              y = γ ⊙ (W0 x + β)     γ ∈ R^d, γ = 1 at init (DiffFit's scale)
    norms              the affine weights of every normalisation layer (LayerNorm, RMSNorm, ...)
    difffit            γ ⊙ (W0 x + β) with β, γ and norms trained (the paper's Table 1 row)
    head               only the task head trains
    full               every parameter trains ("All" in the paper)

Every extra combines with an adapter method by name: `onelora_bias_gamma_norms`.
"""

from .registry import register

register("bias", extras=("bias",), doc="train the biases of the adapted layers (BitFit)")
register("bitfit", extras=("bias",), doc="BitFit: biases of the adapted layers, d per layer")
register("gamma", extras=("gamma",), doc="a trainable output scale γ per adapted layer")
register("norms", extras=("norms",), doc="the normalisation layers' affine parameters")
register("difffit", extras=("bias", "gamma", "norms"), doc="DiffFit: γ(W0x+β), biases and norms")
register("head", doc="the task head only")
register("full", full=True, doc="full fine-tuning: every parameter")
