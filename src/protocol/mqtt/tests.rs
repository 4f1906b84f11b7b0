//! Unit tests of the MQTT codec.
