"""Training: the loop (:mod:`.loop`), its set-up and step (:mod:`.runtime`), the run directory
(:mod:`.rundir`), checkpoints, early stopping, evaluation and metrics; pre-training, the LR
search and prediction build on them. Nothing here imports studies or reports."""

__all__: list[str] = []
