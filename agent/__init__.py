"""Edge telematics agent: sources -> detectors -> outbox -> MQTT uplink."""

__version__ = "0.1.0"
