"""Inertial sensing: IMU sources, mounting calibration, harsh driving and impacts."""
