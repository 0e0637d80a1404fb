//! Contrail message payloads (in progress).
