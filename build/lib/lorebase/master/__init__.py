"""The master (seed: Master node): starts the embedded Redis when no REDIS_URL is set, binds
the listening socket, starts one worker per CPU and the tasks process (each a new interpreter,
lorebase/child.py: the master runs threads, and a fork would copy their locks), and supervises
them; on SIGTERM/SIGINT it stops the workers, then Redis, and exits 0.

One module a job, composed by the Master:
- broker.py: the listening socket; each connection handed to the worker holding the fewest;
- pool.py: the workers: started, heard (pings, acknowledgements), killed when hung, replaced,
  grown and shrunk, and the old ones of a re-exec retired;
- redis_keeper.py: the embedded redis-server started, adopted, watched and restarted;
- tasks_process.py: the tasks process started, its beats heard, killed when stuck, replaced;
- reexec.py: SIGHUP, the master re-executing itself into the code on disk, and master.json;
- supervisor.py: the Master: start, the one loop over all of them, signals, stop.
"""

from .broker import UNACKED_FOR, Broker, bind
from .pool import START_TIMEOUT, Pool, Worker
from .redis_keeper import RedisKeeper
from .reexec import CODE, REEXEC, state_path
from .supervisor import SIGNALS, Master, serve
from .tasks_process import TasksProcess

__all__ = [
    "CODE", "REEXEC", "SIGNALS", "START_TIMEOUT", "UNACKED_FOR", "Broker", "Master", "Pool", "RedisKeeper",
    "TasksProcess", "Worker", "bind", "serve", "state_path",
]
