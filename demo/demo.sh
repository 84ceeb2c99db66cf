#!/usr/bin/env bash
# make demo: the main job end to end on this machine, with a local appliance.
# A small image is built, sent through `airgap serve` over FTPS, removed, fetched back
# (verified, decrypted, loaded) and run. Everything lives in a temporary folder.
set -euo pipefail
AIRGAP=${AIRGAP:-airgap}
# The image is busybox alone, FROM scratch: it runs only if that busybox needs no libraries.
if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
    echo "make demo: needs a static /bin/busybox for its image (Debian: apt-get install busybox-static)" >&2
    exit 1
fi
work=$(mktemp -d /tmp/airgap-demo.XXXXXX)
export XDG_CACHE_HOME=$work/cache XDG_STATE_HOME=$work/state XDG_CONFIG_HOME=$work/config
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    docker rmi -f airgap-demo:1.0 >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n==> %s\n' "$*"; }

step "start the appliance (embedded defaults, a free port, FTPS)"
$AIRGAP serve --listen 127.0.0.1:0 --root "$work/appliance" --tls required 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 100); do grep -q 'serving ftp://' "$work/serve.log" && break; sleep 0.1; done
grep -v '  sender \|  receiver ' "$work/serve.log"
port=$(grep -o 'serving ftp://127.0.0.1:[0-9]*' "$work/serve.log" | grep -o '[0-9]*$')
pin=$(grep -o 'certificate sha256:[0-9a-f]*' "$work/serve.log" | cut -d' ' -f2)
password() { awk -v who="$1" '$1 == who { print $3 }' "$work/appliance/state/credentials.txt"; }

step "keys for both sides"
$AIRGAP keygen --out "$work/sender" >/dev/null
$AIRGAP keygen --out "$work/receiver" >/dev/null
echo "sender key: $(sed -n 2p "$work/sender/signing.pub")"
echo "receiver recipient: $(cat "$work/receiver/recipient.txt")"

step "build a small image"
mkdir "$work/image" && cp /bin/busybox "$work/image/"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nCMD ["/bin/busybox", "echo", "hello across the air gap"]\n' \
    >"$work/image/Dockerfile"
docker build -q -t airgap-demo:1.0 "$work/image" 2>/dev/null
docker images airgap-demo:1.0 --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}'

step "airgap send airgap-demo:1.0 (signed, encrypted, over FTPS)"
AIRGAP_PASSWORD=$(password sender) $AIRGAP send airgap-demo:1.0 \
    --server "ftps://sender@127.0.0.1:$port/" --tls-fingerprint "$pin" \
    -R "$work/receiver/recipient.txt" --sign-key "$work/sender/signing.key" --quiet

step "remove the image, as if on the isolated side"
docker rmi airgap-demo:1.0 >/dev/null && echo "removed"

step "airgap fetch (verify, decrypt, load)"
for _ in $(seq 100); do ls "$work/appliance/pub/outgoing/"*.minisig >/dev/null 2>&1 && break; sleep 0.1; done
AIRGAP_PASSWORD=$(password receiver) $AIRGAP fetch \
    --server "ftps://receiver@127.0.0.1:$port/" --tls-fingerprint "$pin" \
    -i "$work/receiver/identity.txt" --trust "$work/sender/signing.pub" --consume --quiet

step "run it"
docker run --rm --network host airgap-demo:1.0
