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

# Scheduled backups: the units, the timer, and one real run (create, then
# prune) against the packaged daemon, with its snapshot and its audit entry.
BACKUP_UNITS="/usr/lib/systemd/system/strongroom-backup.service /usr/lib/systemd/system/strongroom-backup.timer"
check "systemd-analyze verify of the backup service and timer is clean" sh -c \
    "out=\$(systemd-analyze verify $BACKUP_UNITS 2>&1); rc=\$?; printf '%s\n' \"\$out\"; [ \$rc -eq 0 ] && [ -z \"\$out\" ]"
check "systemd-analyze security strongroom-backup.service <= 0.3" sh -c \
    "systemd-analyze security strongroom-backup.service | tee -a /out/detail | sed -n 's/.*strongroom-backup.service: \([0-9.]*\).*/\1/p' | awk '{ exit !(\$1 <= 0.3) }'"
check "backup timer enabled" sh -c '[ "$(systemctl is-enabled strongroom-backup.timer)" = enabled ]'
check "backup timer active" systemctl is-active strongroom-backup.timer
check "systemctl start strongroom-backup.service (backup create, then prune)" \
    systemctl start strongroom-backup.service
journalctl -u strongroom-backup --no-pager >> /out/detail 2>&1
check "backup list shows a snapshot" sh -c \
    'strongroomctl --json backup list | tee -a /out/detail | python3 -c "
import json, sys
d = json.load(sys.stdin)
snaps = d.get(\"result\", d)[\"snapshots\"]
assert len(snaps) >= 1 and all(s.get(\"id\") for s in snaps), snaps
"'
check "system audit log has a backup.create entry" python3 -c '
import json, subprocess
entries, start, pages = [], 0, 0
while start is not None and pages < 1000:
    pages += 1
    out = subprocess.run(["strongroomctl", "--json", "audit", "system", "list", "--from", str(start), "--limit", "1000"],
                         check=True, capture_output=True, text=True).stdout
    d = json.loads(out)
    page = d.get("result", d)
    entries += page["entries"]
    start = page.get("next")
assert any(e.get("action") == "backup.create" for e in entries), [e.get("action") for e in entries]
'
check "backup repository is 0700 strongroom:strongroom" sh -c \
    '[ "$(stat -c %U:%G:%a /var/backups/strongroom)" = strongroom:strongroom:700 ]'

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
check "backup timer still enabled and active after upgrade" sh -c \
    '[ "$(systemctl is-enabled strongroom-backup.timer)" = enabled ] && systemctl is-active strongroom-backup.timer'

journalctl -u strongroomd --no-pager > /out/journal.txt 2>&1
journalctl -u strongroom-backup --no-pager > /out/journal-backup.txt 2>&1
if [ $failed -eq 0 ]; then echo "PASS all" >> "$out"; else echo "FAIL some" >> "$out"; fi
