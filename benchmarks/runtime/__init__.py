"""What a run needs to survive, to be timed and to be found again: processes (``distributed``), checkpoints
and resume (``checkpoint``), non-finite values (``faults``), run directories and their locks (``rundir``),
time per phase (``phases``) and the metric loggers (``loggers``)."""
