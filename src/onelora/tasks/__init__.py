"""Lightning tasks and their losses."""
