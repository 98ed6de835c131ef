"""Starting a private cluster on this machine: Redis and one worker process per device."""
