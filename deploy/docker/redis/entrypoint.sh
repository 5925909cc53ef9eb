#!/bin/sh
# As the official redis image's entrypoint does: no config file given, so not protected mode.
if [ "$1" = redis-server ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
