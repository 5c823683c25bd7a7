# strongroom %preun: stop and disable the units on erase (not on upgrade);
# the backup timer first, so it cannot start a run against a stopped daemon.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now strongroom-backup.timer >/dev/null 2>&1 || :
    systemctl --no-reload stop strongroom-backup.service >/dev/null 2>&1 || :
    systemctl --no-reload disable --now strongroomd.service >/dev/null 2>&1 || :
fi
