#!/bin/sh
# As the official image: "redis-server" gets listening on every address without protected mode (the
# container's network is the boundary); "-..." arguments or a .conf file are handed to redis-server.
set -e
case "$1" in
    -* | *.conf) set -- redis-server "$@" ;;
esac
if [ "$1" = "redis-server" ]; then
    shift
    set -- redis-server --bind 0.0.0.0 --protected-mode no --dir /data "$@"
fi
exec "$@"
