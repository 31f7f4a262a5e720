"""Networks: the denoising U-Net (``unet``), the spaces it works in (``spaces``: pixel, wavelet; the
Haar transform in ``wavelet``) and its training-memory estimate (``memory``).

May import: ``medddpm.config``, ``errors``, ``runtime``, ``diffusion`` (the memory module measures
a real training step, loss included).
"""
