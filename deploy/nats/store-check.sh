#!/bin/sh
# UPR Tracker: refuses to start a NATS node on a JetStream store made for the
# other layout (compose.yaml and compose.cluster.yaml run it before
# nats-server).
#
#   store-check.sh single|cluster STORE_DIR -- COMMAND...
#
# A single server keeps its streams in STORE_DIR/jetstream/<account>/streams;
# a cluster node also keeps the cluster's metadata in
# STORE_DIR/jetstream/$SYS/_js_/_meta_. Started as a cluster node on a
# single server's store, nats-server restores the old streams on that node
# only and the cluster does not know them: the services then create new,
# empty streams beside them (the event log seems lost, consumers clash).
# Started as a single server on a cluster node's store, it is the same the
# other way. So either is refused here, with what to do instead; an empty
# store (the first start) passes.
set -eu
mode=$1
store=$2
shift 2
[ "${1:-}" = "--" ] && shift

js="$store/jetstream"
streams=$(ls -d "$js"/*/streams/* 2>/dev/null | sed 's|.*/||' | sort -u | tr '\n' ' ')
if [ -d "$js/\$SYS/_js_/_meta_" ]; then
  made=cluster
elif [ -n "$streams" ]; then
  made=single
else
  made=
fi

if [ -n "$made" ] && [ "$made" != "$mode" ]; then
  echo "store-check: $store holds a JetStream store made by a $made" \
    "$( [ "$made" = single ] && echo server || echo node ) (streams: ${streams:-none})," \
    "and this node starts as a $mode $( [ "$mode" = single ] && echo server || echo node )." \
    "Its streams would not be seen and the services would create new, empty ones." \
    "Start with the layout that made it, or move the data: back up each stream there" \
    "(nats stream backup), start this layout on empty volumes, restore (nats stream restore)" \
    "and set the replicas (docs/operations.md, Troubleshooting)." >&2
  exit 1
fi
exec "$@"
