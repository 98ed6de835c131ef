"""Jobs: whole runs submitted to a long-lived coordinator (`editbatch serve`) and queued in Redis."""
