"""What runs outside requests, in the tasks process (process.py, started by the master):
the durable queues (queue.py), the scheduled tasks once per cluster (schedule.py), the beat
(beat.py), backups and restores (backup.py, vault.py, restoring.py). The package itself holds
only the names the admin's routes read; importing it starts nothing."""

from __future__ import annotations

SCHEDULED = ("backup", "check", "stats")  # lorebase's own scheduled tasks' names (`task:{<name>}`)
