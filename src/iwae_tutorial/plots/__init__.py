"""Figures used by the chapters, one module per topic: ``bounds`` (chapter 1), ``camel``
(chapter 2), ``latent`` (chapters 3 and 4), ``table`` (chapter 5), ``estimators`` (chapters 6
and 7) and ``studies`` (the chapter on depth, latent size and binarization). Every colour they
use, one per model kind, lives in ``style``."""
