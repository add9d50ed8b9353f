"""Console scripts. Importing this package selects native threads (no eventlet) for
every command before anything imports an oslo library: see computeagent.threads."""
from computeagent import threads as _threads

_threads.use_native_threads()
