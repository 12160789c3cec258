"""Figures used by the chapters, one module per topic: ``bounds`` (chapter 1), ``camel``
(chapter 2), ``latent`` (chapters 3 and 4) and ``table`` (chapter 5). Every colour they use,
one per model kind, lives in ``style``."""
