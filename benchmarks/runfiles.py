"""What a run directory's files are called and hold, named once for the trainer that writes them and the
report and studies that read them (a leaf: the report is built from run files alone, without torch).

- :data:`SUMMARY` (``summary.json``): the run's identity, resolved config, versions, git revision, final
  evaluation, budget and totals; written last, so its presence marks a finished (or failed) run.
- :data:`RUN_CONFIG` (``run_config.json``): the resolved config, written first (resume checks it).
- :data:`EVAL`, :data:`TRAIN`, :data:`TIME` (``<name>.jsonl``, :data:`STEP_FILES`): one row per evaluation,
  per training step, and the step's wall times, appended step by step.
- :data:`SAMPLES` (``samples.jsonl``): the final evaluation's prompts, responses and rewards.
- :data:`CHECKPOINTS` (``checkpoints/``): what a resumed run starts from.

Phases (:data:`PHASES`): ``generation`` (the policy sampling its responses), ``scoring`` (the reward model
and the gold judge), ``logprobs`` (the policy's and the reference's log-probs of a rollout), ``prepare``
(the algorithm's own preparation of a batch: values, advantages, reference log-probs of offline pairs),
``update`` (the gradient updates), ``evaluation`` and ``checkpoint``. Each step's row of ``time.jsonl``
holds that step's ``time/<phase>_seconds``; ``summary.json``'s ``phase_seconds`` the totals
(:mod:`rlhf_bench.benchmarks.runtime.phases` measures them).
"""

from __future__ import annotations

#: The version of these files' layout, recorded first in every ``summary.json`` (:data:`VERSION_KEY`). Bump it
#: when a file, a field or a column changes name or meaning. The report reads every version up to this one
#: and leaves out a run of a newer one, saying so; a summary without the field is version 1 (runs written
#: before it was recorded).
RUN_FILES_VERSION = 1
VERSION_KEY = "run_files_version"

PHASES = ("generation", "scoring", "logprobs", "prepare", "update", "evaluation", "checkpoint")
STEP_PHASES = PHASES[:5]  # a training step's; evaluation and checkpoints have rows of their own

SUMMARY = "summary.json"
RUN_CONFIG = "run_config.json"
EVAL, TRAIN, TIME = "eval.jsonl", "train.jsonl", "time.jsonl"
STEP_FILES = {"eval": EVAL, "train": TRAIN, "time": TIME}  # appended to step by step
SAMPLES = "samples.jsonl"
CHECKPOINTS = "checkpoints"
#: The files that make a directory a run's (the report looks for these).
RUN_FILES = frozenset({SUMMARY, RUN_CONFIG, EVAL, TRAIN})


def is_finished(summary: dict | None) -> bool:
    """Whether a run's summary records a finished run: ``status: finished``, or no status at all (summaries
    written before the field). The one rule for skipping a run on a re-run and leaving its files alone."""
    return summary is not None and summary.get("status", "finished") == "finished"
