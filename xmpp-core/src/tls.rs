//! rustls configuration from the Contrail certificate options (in progress).
