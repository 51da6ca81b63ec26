"""Every dbus-fast line of the daemon: the service, polkit, logind and the compat shims."""
