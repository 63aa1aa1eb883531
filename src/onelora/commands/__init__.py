"""What the command lines call: a run or its dry run (`run`, for run.py) and a sweep of a manifest (`launch`,
for scripts/sweep.py). The top layer: it may import every other part of the package."""
