"""What a run directory's files hold, named once for the trainer that writes them and the report that reads
them (a leaf: the report is built from run files alone, without torch).

Phases (:data:`PHASES`): ``generation`` (the policy sampling its responses), ``scoring`` (the reward model
and the gold judge), ``logprobs`` (the policy's and the reference's log-probs of a rollout), ``prepare``
(the algorithm's own preparation of a batch: values, advantages, reference log-probs of offline pairs),
``update`` (the gradient updates), ``evaluation`` and ``checkpoint``. Each step's row of ``time.jsonl``
holds that step's ``time/<phase>_seconds``; ``summary.json``'s ``phase_seconds`` the totals
(:mod:`rlhf_bench.benchmarks.runtime.phases` measures them).
"""

PHASES = ("generation", "scoring", "logprobs", "prepare", "update", "evaluation", "checkpoint")
STEP_PHASES = PHASES[:5]  # a training step's; evaluation and checkpoints have rows of their own
