"""Networks: the denoising U-Net (``unet``), the spaces it works in (``spaces``: pixel, wavelet; the
Haar transform in ``wavelet``), the autoencoder of the latent space (``autoencoder``) and memory
estimates for training, train-autoencoder and latent sampling (``memory``).

May import: ``medddpm.config``, ``errors``, ``runtime``, ``diffusion`` (the memory module measures
a real training step, loss included).
"""
