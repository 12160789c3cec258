"""How much of the paper's protocol a ``reproduce`` run does (:class:`Budget`, ``--budget``) and
the name of a run and of its result file (:func:`protocol_tag`).

Budgets (``--budget``):

==========  ===========================================================================
``smoke``   200 training images, 1 epoch; L_50 on 100 test images (seconds; for CI)
``dry``     200 training images, 4 epochs (two stages); L_50 on 100 test images
``book``    all training images, the first 4 epochs of the paper's schedule (stage 0:
            1 epoch at lr 1e-3, stage 1: 3 epochs at 7.2e-4); L_5000 on the first 1,000
            test images. MNIST: 32 minutes measured with ``--threads 1`` on the project's
            2-core CPU while 3-6 other jobs ran (training 27 min, evaluation 4.5 min);
            about 20 minutes of CPU time in all.
``full``    the paper: all training images, 3,280 epochs; L_5000 on all test images
``EPOCHS``  an integer: the first EPOCHS epochs of the paper's schedule on all training
            images; L_5000 on all test images
==========  ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from .paper import EVAL_K, PAPER_EPOCHS
from .schedule import PAPER_BATCH

__all__ = ["Budget", "BUDGETS", "resolve_budget", "protocol_tag", "FAST_MOMENTS"]

#: how the fast trainers store Adam's moments between invocations (fast.fit_fast(moments=)):
#: part of their protocol, named in the result file
FAST_MOMENTS = "bfloat16"


@dataclass(frozen=True)
class Budget:
    """How much of the paper's protocol a run does."""

    name: str
    n_train: int | None  # None: all training images
    epochs: int  # the first `epochs` epochs of the paper's schedule
    eval_k: int
    eval_n: int | None  # None: all test images
    description: str


BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", 200, 1, 50, 100,
                    "200 training images, 1 epoch; L_50 on 100 test images (seconds; for CI)"),
    "book": Budget("book", None, 4, EVAL_K, 1000,
                   "all training images, the first 4 epochs of the paper's schedule (1 epoch "
                   "at lr 1e-3, 3 at 7.2e-4); L_5000 on the first 1,000 test images"),
    "dry": Budget("dry", 200, 4, 50, 100,
                  "200 training images, 4 epochs (stage ends 1 and 4); L_50 on 100 test "
                  "images (the device job's dry run: two stages in seconds)"),
    "full": Budget("full", None, PAPER_EPOCHS, EVAL_K, None,
                   "the paper's protocol: all training images, 3,280 epochs; L_5000 on all "
                   "test images"),
}


def resolve_budget(text: str) -> Budget:
    """``smoke``, ``book``, ``full`` or a positive number of epochs."""
    text = str(text).strip().lower()
    if text in BUDGETS:
        return BUDGETS[text]
    try:
        epochs = int(text)
    except ValueError:
        raise ValueError(f"--budget must be smoke, dry, book, full or a number of epochs, got "
                         f"{text!r}") from None
    if epochs < 1:
        raise ValueError(f"--budget: the number of epochs must be positive, got {epochs}")
    return Budget(str(epochs), None, epochs, EVAL_K, None,
                  f"all training images, the first {epochs} epochs of the paper's schedule; "
                  "L_5000 on all test images unless --eval-n says otherwise")


def protocol_tag(dataset: str, budget: str, batch_size: int = PAPER_BATCH,
                 trainer: str = "exact", tf32: bool = False,
                 two_layer_epochs: int | None = None) -> str:
    """The name of a run and of its result file: ``<dataset>-<budget>`` plus what differs
    from the paper's protocol (``-2L<epochs>`` when the two-layer cells stop earlier,
    ``-b<batch>``, ``-fast``, ``-tf32``)."""
    tag = f"{dataset}-{budget}"
    if two_layer_epochs is not None:
        tag += f"-2L{int(two_layer_epochs)}"
    if batch_size != PAPER_BATCH:
        tag += f"-b{batch_size}"
    if trainer != "exact":
        tag += f"-{trainer}"
    if tf32:
        tag += "-tf32"
    return tag
