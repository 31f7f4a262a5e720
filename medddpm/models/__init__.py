"""Networks: the denoising U-Net (``unet``) and its training-memory estimate (``memory``).

May import: ``medddpm.config``, ``errors``, ``runtime``, ``diffusion`` (the memory module measures
a real training step, loss included).
"""
