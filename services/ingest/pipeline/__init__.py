"""The I/O between a socket, its session core and Redis: the session runner, the result router
(per-session pub/sub) and the backlog the admission and eager guesses read."""
