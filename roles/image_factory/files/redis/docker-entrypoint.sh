#!/bin/sh
# As the official image: "redis-server" gets listening on every address without protected mode (the
# container's network is the boundary); "-..." arguments or a .conf file are handed to redis-server.
# A configuration file must stay redis-server's first argument, so the defaults go after it (and the
# file's own settings, read first, are overridden only by what is given on the command line).
set -e
case "$1" in
    -* | *.conf) set -- redis-server "$@" ;;
esac
if [ "$1" = "redis-server" ]; then
    shift
    config=""
    case "${1:-}" in
        *.conf) config="$1"; shift ;;
    esac
    set -- redis-server ${config:+"$config"} --bind 0.0.0.0 --protected-mode no --dir /data "$@"
fi
exec "$@"
