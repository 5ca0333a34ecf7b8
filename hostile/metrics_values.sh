#!/bin/bash
# Odd --metrics values: each should start (and print its URL) or fail with a clear error, never a traceback.
cd "$(dirname "$0")/.."; D=$(mktemp -d); Z=.venv/bin/zmq-emitter
python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(); print(s.getsockname()[1]); import time; time.sleep(30)' > $D/busy &
BUSYPID=$!; sleep 0.5; BUSY=$(cat $D/busy)
for v in "127.0.0.1:0" "0" ":9100" "localhost:0" "nosuchhost.invalid:0" "[::1]:0" "::1:0" "[::1]" "127.0.0.1:$BUSY" \
         "127.0.0.1:99999" "127.0.0.1:-1" "/tmp/metrics.sock" "unix:///tmp/x" "http://127.0.0.1:0/metrics" "" " " \
         "127.0.0.1:0 " "10.255.255.1:0" "[fe80::1]:0" "0.0.0.0:0" "127.0.0.1:00000000000000000009100" "127.0.0.1:٩" ; do
  echo "=== --metrics '$v'"
  timeout 6 nice $Z broker --frontend ipc://$D/f --backend ipc://$D/b --history none --startup-grace 0 --metrics "$v" 2>&1 | head -4
  echo "rc=${PIPESTATUS[0]}"
done
kill $BUSYPID; rm -rf $D
