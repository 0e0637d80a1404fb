//! Contrail INI configuration loader (in progress).
