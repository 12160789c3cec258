"""Figures used by the chapters, one module per topic (``bounds``, ``latent``, ``table``)."""
