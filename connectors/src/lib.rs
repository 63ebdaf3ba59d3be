//! Connector families (PostgreSQL, MySQL, MQTT, ...), filled by later issues.
