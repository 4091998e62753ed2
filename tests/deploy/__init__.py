"""Tests of the deployment files in systemd/ (units, udev rules)."""
