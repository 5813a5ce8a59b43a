"""Exit codes of the commands that ask the daemon, the same for every command.

Why one table: a script must tell "the volume is not mounted" from "no daemon answered" from
"you may not ask", and must not have to learn a different number per command."""

OK = 0
NOT_MOUNTED = 1  # explain: not (all) mounted; wait: timed out while the daemon answered
NO_SUCH_POD = 2  # explain/wait: the pod (or its volume) is not in the desired state
NO_DAEMON = 3  # no daemon answered: socket missing, connection refused, closed, or timed out
PERMISSION_DENIED = 4  # the socket or the daemon refused this user
DAEMON_ERROR = 5  # the daemon answered with an error (a bad request, an internal error)
BROKEN_PIPE = 141  # stdout was closed early (`| head`): 128 + SIGPIPE, as a shell reports it

EPILOG = """exit codes (every command that asks the daemon):
  3  no daemon answered (socket missing, connection refused or closed, timed out)
  4  permission denied (the admin socket answers root only)
  5  the daemon answered with an error
  141  stdout was closed early (e.g. piped into head)"""
