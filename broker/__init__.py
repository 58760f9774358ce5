"""Hardened embedded MQTT broker: amqtt with the fixes listed in DESIGN.md section 4."""
