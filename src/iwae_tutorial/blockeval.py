"""L_k of many models on fixed images, in blocks, resumable: the scoring step of ``reproduce``.

A long evaluation (L_5000 of several models on thousands of images) is cut into blocks of
images; after each block the scores so far, the noise generators' states and the matrix-product
kernel are saved, so a stopped run goes on from its last block with the same noise and the same
kernel, and gives the scores an uninterrupted run would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoints import CheckpointError, load_tensors, save_tensors
from .evaluate import chunk_size_for, log_likelihood_many
from .fleet.stacked import resolve_gemm
from .models import IWAE
from .stopping import StopFlag

__all__ = ["evaluate_in_blocks"]


def evaluate_in_blocks(
    models: Sequence[IWAE],
    x: Tensor,
    k: int,
    path: Path,
    key: dict,
    *,
    noise_seed: int,
    batch_size: int = 100,
    block: int = 100,
    gemm: str = "auto",
    seconds_left: Callable[[], float | None] = lambda: None,
    log: Callable[[str], None] = lambda msg: None,
    progress: bool = False,
    stack_size: int | None = None,
) -> dict[str, Any] | None:
    """L_k of every model on the images ``x: [n, x_dim]``, ``block`` images at a time, saved
    to ``path`` after each block with ``key`` (what the scores depend on); a saved state with
    the same key is resumed. Each model draws its noise from its own generator seeded
    ``noise_seed``, drawn in chunks of samples sized for the number of models stacked
    (:func:`~iwae_tutorial.evaluate.chunk_size_for`): ``stack_size`` (default: as many as
    ``models``) sizes them for that many, so that a share of a fleet gets the numbers of the
    whole fleet; a lone model is then stacked with a copy of itself (the products of a stack of
    one round otherwise). At least one block is scored per call; then it stops (state saved) when
    ``seconds_left()`` would not cover another block, or on SIGTERM/SIGINT.

    -> {"ll": [len(models), n] float64, "seconds": float, "gemm": the kernel used}, or None
    when it stopped early. A NaN or infinite score is a ValueError naming ``path``.
    """
    device = models[0].device
    n = int(x.shape[0])
    lone = stack_size is not None and stack_size > 1 and len(models) == 1
    models = [models[0], models[0]] if lone else models  # its copy's scores are dropped
    max_rows = 400_000 if device.type == "cuda" else 8_000
    chunk = None if stack_size is None else chunk_size_for(k, max(1, min(batch_size, n)),
                                                           stack_size, max_rows)
    gens = [torch.Generator(device=device).manual_seed(noise_seed) for _ in models]
    state: dict[str, Any] = {"key": key, "done": 0, "seconds": 0.0,
                             "ll": torch.full((len(models), n), float("nan"),
                                              dtype=torch.float64)}
    if path.exists():
        saved = load_tensors(path, what="saved evaluation",
                             fix="delete it to redo the evaluation (the training is kept)")
        if saved.get("key") == key:
            _check_saved(saved, len(models), n, path)
            state = saved
            for g, s in zip(gens, saved["rng"]):
                g.set_state(s)
        else:
            log("the saved evaluation used other settings; evaluating anew")
    # the kernel is chosen once (timed when "auto") and kept for every block of this evaluation
    state["gemm"] = state.get("gemm") or resolve_gemm(gemm, device, torch.float32)
    if state["done"] < n:
        log(f"evaluating L_{k} on images {state['done']}..{n} ({len(models)} models at once, "
            f"gemm={state['gemm']})")
    last_block_s, blocks = 0.0, 0
    with StopFlag() as stop:
        while state["done"] < n:
            rem = seconds_left()  # one block at least per call, as training does a step
            if stop.requested or (blocks and rem is not None and rem < 1.25 * last_block_s + 5):
                log(f"stopped the evaluation at {state['done']}/{n} images")
                return None
            b0, b1 = state["done"], min(state["done"] + block, n)
            t0 = time.perf_counter()
            ll = log_likelihood_many(models, x, k, batch_size=batch_size, generators=gens,
                                     start=b0, stop=b1, gemm=state["gemm"], max_rows=max_rows,
                                     chunk_size=chunk)
            state["ll"][:, b0:b1] = ll[:, b0:b1]
            last_block_s = time.perf_counter() - t0
            state.update(done=b1, seconds=state["seconds"] + last_block_s,
                         rng=[g.get_state() for g in gens])
            blocks += 1
            save_tensors(path, state)
            if progress:
                log(f"  L_{k}: {b1}/{n} images ({last_block_s:.1f} s for this block)")
    if not torch.isfinite(state["ll"]).all():
        raise ValueError(f"a model has a non-finite L_k (NaN or inf weights?); delete "
                         f"{path.parent} to train and score it again")
    return {**state, "ll": state["ll"][:1]} if lone else state


def _check_saved(saved: dict, m: int, n: int, path: Path) -> None:
    """A saved evaluation holds what :func:`evaluate_in_blocks` wrote: ``done`` images in
    [0, n], scores ``ll: [m, n]`` float64, ``m`` generator states, the seconds and the kernel;
    else a CheckpointError naming ``path`` and the fix (one line)."""
    done, ll, rng = saved.get("done"), saved.get("ll"), saved.get("rng")
    ok = (isinstance(done, int) and not isinstance(done, bool) and 0 <= done <= n
          and isinstance(ll, Tensor) and tuple(ll.shape) == (m, n) and ll.dtype == torch.float64
          and isinstance(rng, list) and len(rng) == m
          and all(isinstance(r, Tensor) and r.dtype == torch.uint8 for r in rng)
          and isinstance(saved.get("seconds"), (int, float))
          and saved.get("gemm") in (None, "bmm", "onednn"))
    if not ok or (done and not torch.isfinite(ll[:, :done]).all()):
        raise CheckpointError(f"the saved evaluation {path} is damaged (its progress, scores or "
                              "generator states are not what the evaluation wrote); delete it "
                              "to redo the evaluation (the training is kept)")
