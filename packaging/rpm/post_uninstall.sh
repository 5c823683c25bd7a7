# strongroom %postun. The master key and /var/lib/strongroom are kept on
# erase: remove /etc/credstore.encrypted/strongroom-master-key by hand to
# destroy the key, and with it every firm's data.
systemctl daemon-reload >/dev/null 2>&1 || :
