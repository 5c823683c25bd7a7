# strongroom %post: service user, credential store, (once) the master key.
KEY=/etc/credstore.encrypted/strongroom-master-key
systemd-sysusers strongroom.conf || exit 1
systemd-tmpfiles --create strongroom.conf || exit 1
if [ ! -e "$KEY" ]; then
    # First install only: a new master key from the FIPS DRBG, sealed to this
    # host by systemd-creds (TPM2 when present, else the host key).
    umask 077
    secret=$(strongroomctl keys generate-master)
    if [ "${#secret}" -ne 64 ]; then
        echo "strongroom: could not generate the master key" >&2
        exit 1
    fi
    printf '%s' "$secret" | systemd-creds encrypt --name=master-key - "$KEY.new.$$" || exit 1
    secret=
    mv "$KEY.new.$$" "$KEY"
    echo "strongroom: sealed a new master key into $KEY; back it up now (README: Key escrow)"
fi
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
    systemctl preset strongroomd.service >/dev/null 2>&1 || :
    # Scheduled backups are part of the appliance, not a site policy: the
    # timer is enabled and started whatever the presets say. Its runs fail
    # (and say so in the journal) until strongroomd is started.
    systemctl enable --now strongroom-backup.timer >/dev/null 2>&1 || :
else
    systemctl try-restart strongroomd.service >/dev/null 2>&1 || :
    systemctl try-restart strongroom-backup.timer >/dev/null 2>&1 || :
fi
