#!/usr/bin/env bash
# Certificates and keys for a secure Flower deployment (SuperLink + SuperNodes).
#
#   scripts/make_certs.sh -o DIR [-n NAMES] [-k NUM_KEYS]
#
#   -o DIR       output folder, created if missing (keep it out of git: it holds private keys)
#   -n NAMES     comma-separated host names and IP addresses the SuperNodes use to reach the
#                SuperLink, written as the server certificate's subjectAltNames
#                (default: localhost,127.0.0.1; keep 127.0.0.1: the SuperLink's own ServerApp
#                connects to it on loopback)
#   -k NUM_KEYS  also create NUM_KEYS SuperNode authentication key pairs (ECDSA P-384, OpenSSH
#                format, as flower-supernode --auth-supernode-private-key and
#                flwr supernode register expect): supernode-<K> and supernode-<K>.pub
#
# Writes DIR/ca.crt + ca.key (the certificate authority; ca.crt goes to every device),
# DIR/server.pem + server.key (the SuperLink's certificate, signed by the CA). Needs openssl
# (and ssh-keygen for -k). Existing files are never overwritten: use a new or empty folder.
set -euo pipefail

out=
names=localhost,127.0.0.1
keys=0
usage() { sed -n '4,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while getopts "o:n:k:h" opt; do
  case "$opt" in
    o) out=$OPTARG ;;
    n) names=$OPTARG ;;
    k) keys=$OPTARG ;;
    *) usage ;;
  esac
done
[[ -n $out ]] || usage
[[ $keys =~ ^[0-9]+$ ]] || { echo "error: -k $keys is invalid: allowed a non-negative integer" >&2; exit 2; }
command -v openssl >/dev/null || { echo "error: openssl not found" >&2; exit 2; }
if (( keys > 0 )); then
  command -v ssh-keygen >/dev/null || { echo "error: ssh-keygen not found (needed for -k)" >&2; exit 2; }
fi

mkdir -p "$out"
for file in ca.crt ca.key server.pem server.key; do
  [[ -e $out/$file ]] && { echo "error: $out/$file exists: use a new or empty folder" >&2; exit 2; }
done

san=""
IFS=, read -r -a entries <<< "$names"
for entry in "${entries[@]}"; do
  [[ -z $entry ]] && continue
  if [[ $entry =~ ^[0-9]+(\.[0-9]+){3}$ || $entry == *:* ]]; then
    san+="${san:+,}IP:$entry"
  else
    san+="${san:+,}DNS:$entry"
  fi
done
[[ -n $san ]] || { echo "error: -n '$names' names no host" >&2; exit 2; }

umask 077  # private keys readable by their owner only
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -sha256 -days 365 -nodes -subj "/CN=initmatters Flower CA" \
  -keyout "$out/ca.key" -out "$out/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-384 -sha256 -nodes -subj "/CN=${entries[0]}" \
  -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days 365 -sha256 -out "$out/server.pem" \
  -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san") \
  2>/dev/null
rm -f "$out/server.csr" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.pem"

for ((k = 0; k < keys; k++)); do
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$k" -f "$out/supernode-$k"
  chmod 644 "$out/supernode-$k.pub"
done

echo "certificates in $out: ca.crt (to every device), server.pem + server.key (SuperLink only; SANs $san)"
(( keys > 0 )) && echo "SuperNode keys in $out: supernode-<K> (private, device K only) and supernode-<K>.pub (register)"
exit 0
