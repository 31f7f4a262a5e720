"""Networks: the denoising U-Net (``unet``) and its training-memory estimate (``memory``).

May import: ``medddpm.config``, ``medddpm.errors``.
"""
