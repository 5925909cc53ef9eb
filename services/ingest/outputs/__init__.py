"""Where a call's events go besides its socket: per-call event streams and the webhook."""
