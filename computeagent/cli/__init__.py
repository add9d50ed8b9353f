"""``computeagent-ctl`` commands (cliff), one module per subject: ``instances``,
``migrations``, ``host``; shared plumbing (connection, bounded RPC, waiting,
progress, exit codes) in ``base``.  A new subject is a new module listed in
``computeagent.cmd.ctl.COMMAND_MODULES``."""
