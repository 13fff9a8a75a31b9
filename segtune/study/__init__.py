"""Run a study on Optuna: storage, workers, trials, resume, and the leaderboard.

A study file (:mod:`~segtune.study.spec`) names a base config, a search space
(:mod:`~segtune.study.space`), a search method and an objective. :func:`run_study` runs its
trials in one or more workers (:mod:`~segtune.study.workers`) on an Optuna storage
(:mod:`~segtune.study.storage`); each trial (:mod:`~segtune.study.objective`) trains its
configuration and records its result under the keys of :mod:`~segtune.study.records`, whose
:class:`~segtune.study.records.TrialRecord` the leaderboard, the report and the CLI read.
``optuna-dashboard <storage>`` shows the stored attributes as they are.
:func:`run_stages` runs a staged study (:mod:`~segtune.study.stages`), each stage a study started
from the previous winner; :func:`dry_run` (:mod:`~segtune.study.dry_run`) checks and plans a study
file without training.
"""

from segtune.study.objective import DataCache, replay_twin
from segtune.study.records import (AUTO_LR_CACHE, RunRecord, Status, TrialRecord, best_trial, leaderboard,
                                   study_records, trial_reason)
from segtune.study.dry_run import DryRun, dry_run
from segtune.study.space import Space, config_for
from segtune.study.spec import StudySpec, load_study
from segtune.study.storage import StudyStorage, check_study_file, default_study_dir, load_existing_study, open_storage
from segtune.study.stages import Decision, is_staged, load_stages, run_stages, stage_for_worker
from segtune.study.workers import open_study, run_study, run_worker, study_threads

__all__ = ["AUTO_LR_CACHE", "DataCache", "Decision", "DryRun", "RunRecord", "Space", "Status", "StudySpec", "StudyStorage", "TrialRecord",
           "best_trial", "check_study_file", "config_for", "default_study_dir", "dry_run", "is_staged", "leaderboard",
           "load_existing_study", "load_stages", "load_study", "open_storage", "open_study", "replay_twin", "run_stages",
           "run_study", "run_worker", "stage_for_worker", "study_records", "study_threads", "trial_reason"]
