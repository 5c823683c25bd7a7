# strongroom %preun: stop and disable the service on erase (not on upgrade).
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now strongroomd.service >/dev/null 2>&1 || :
fi
