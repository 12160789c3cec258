"""Figures used by the chapters, one module per topic: ``bounds`` (chapter 1), ``camel``
(chapter 2), ``latent`` (chapters 3 and 4), ``table`` (chapter 5), ``estimators`` (chapters 6
and 7), ``studies`` (the chapter on depth, latent size and binarization) and ``implicit``
(reweighted wake-sleep and the implicit posterior). Every colour they use, one per model kind,
lives in ``style``."""
