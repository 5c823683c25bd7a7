#!/bin/bash
# Runs inside the booted test container; writes PASS/FAIL lines to /out/result.
set -u
out=/out/result
: > "$out"
failed=0
pass() { echo "PASS $*" >> "$out"; }
fail() { echo "FAIL $*" >> "$out"; failed=1; }
check() { local what=$1; shift; if "$@" >> /out/detail 2>&1; then pass "$what"; else fail "$what"; fi; }

wait_active() {
    for _ in $(seq 1 60); do
        systemctl is-active --quiet strongroomd && [ -S /run/strongroom/admin.sock ] && return 0
        sleep 1
    done
    return 1
}

KEY=/etc/credstore.encrypted/strongroom-master-key
check "service active after boot" wait_active
check "admin socket belongs to the admin group" sh -c '[ "$(stat -c %G:%a /run/strongroom/admin.sock)" = strongroom-admin:660 ]'
check "systemctl is-active" systemctl is-active strongroomd
check "strongroomctl status over the admin socket" strongroomctl status
status=$(curl -sk https://127.0.0.1:8443/status)
echo "status: $status" >> /out/detail
check "/status over HTTPS reports fips" python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["fips"] is True, d' "$status"
sleep 1
check "journald holds a structured request line" sh -c \
    'journalctl -u strongroomd -o json --no-pager | python3 -c "
import json, sys
lines = [json.loads(l) for l in sys.stdin if l.strip()]
assert any(l.get(\"ROUTE\") == \"/status\" and l.get(\"STATUS\") == \"200\" and l.get(\"REQUEST_ID\") for l in lines), \"no request line\"
"'
check "master key credential exists" test -s "$KEY"
check "master key not readable by the service user" sh -c \
    "! setpriv --reuid strongroom --regid strongroom --clear-groups cat $KEY >/dev/null 2>&1"
check "master key is sealed (not the clear key)" sh -c "[ \$(stat -c %s $KEY) -gt 64 ]"
check "service runs as strongroom" sh -c \
    '[ "$(stat -c %U /proc/"$(systemctl show -p MainPID --value strongroomd)")" = strongroom ]'
check "systemd-analyze verify" systemd-analyze verify /usr/lib/systemd/system/strongroomd.service
check "systemd-analyze security <= 1.5" sh -c \
    "systemd-analyze security strongroomd.service | tee -a /out/detail | sed -n 's/.*strongroomd.service: \([0-9.]*\).*/\1/p' | awk '{ exit !(\$1 <= 1.5) }'"

# Data written before an upgrade survives it, under the same key.
firm=$(strongroomctl --json firm create "Upgrade Test LLP")
echo "$firm" >> /out/detail
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["result"]["firm"]["id"])' "$firm")
token=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["result"]["api_key"]["secret"])' "$firm")
key_before=$(sha256sum "$KEY")
check "dpkg -i the bumped package" dpkg -i /pkg/strongroom-upgrade.deb
check "service active after upgrade" wait_active
check "upgraded version installed" sh -c "dpkg-query -W -f '\${Version}' strongroom | grep -q -- '-2\$'"
check "master key unchanged by upgrade" test "$key_before" = "$(sha256sum "$KEY")"
check "firm data readable after upgrade" sh -c \
    "curl -sk -H 'Authorization: Bearer $token' https://127.0.0.1:8443/api/v1/firms/$id | grep -q 'Upgrade Test LLP'"

journalctl -u strongroomd --no-pager > /out/journal.txt 2>&1
if [ $failed -eq 0 ]; then echo "PASS all" >> "$out"; else echo "FAIL some" >> "$out"; fi
