"""What several test modules share: model, algorithm and Hugging Face fixtures (``models``, ``algo``,
``hf``), hand-written references for the harness's traps (``harness``), synthetic run directories for the
report (``report_runs``), the command line (``cli``) and the worker ``accelerate launch`` runs
(``dist_worker``). Session fixtures stay in ``tests/conftest.py``."""
