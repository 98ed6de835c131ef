"""The producer: checks items, waits for workers, dispatches by mode, writes the run's files."""
