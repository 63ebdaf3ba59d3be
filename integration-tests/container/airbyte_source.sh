#!/bin/sh
# An Airbyte source in POSIX sh, baked into a busybox image for the container test: spec, check,
# discover, and read of "count" records of stream "rows" with a STATE every 100, resuming from
# {"next": n}. Each record carries the image's marker file, proving it ran inside the image.
cmd="$1"; shift
conf=""; state=""
while [ $# -gt 0 ]; do
  case "$1" in
    --config) conf="$2"; shift 2 ;;
    --state) state="$2"; shift 2 ;;
    *) shift ;;
  esac
done
case "$cmd" in
  spec) echo '{"type":"SPEC","spec":{"connectionSpecification":{"type":"object","required":["count"],"properties":{"count":{"type":"integer","minimum":1},"password":{"type":"string","airbyte_secret":true}}}}}' ;;
  check) echo '{"type":"CONNECTION_STATUS","connectionStatus":{"status":"SUCCEEDED"}}' ;;
  discover) echo '{"type":"CATALOG","catalog":{"streams":[{"name":"rows","json_schema":{},"supported_sync_modes":["full_refresh","incremental"],"source_defined_cursor":true,"source_defined_primary_key":[["id"]]}]}}' ;;
  read)
    count=$(sed -n 's/.*"count": *\([0-9]*\).*/\1/p' "$conf")
    start=1
    if [ -n "$state" ]; then start=$(sed -n 's/.*"next": *\([0-9]*\).*/\1/p' "$state"); fi
    marker=$(cat /etc/hstream-image)
    i=$start
    while [ "$i" -le "$count" ]; do
      echo "{\"type\":\"RECORD\",\"record\":{\"stream\":\"rows\",\"emitted_at\":1,\"data\":{\"id\":$i,\"image\":\"$marker\"}}}"
      if [ $((i % 100)) -eq 0 ] || [ "$i" -eq "$count" ]; then
        echo "{\"type\":\"STATE\",\"state\":{\"type\":\"STREAM\",\"stream\":{\"stream_descriptor\":{\"name\":\"rows\"},\"stream_state\":{\"next\":$((i + 1))}}}}"
      fi
      i=$((i + 1))
    done ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
