//! The `Store` conformance suite against the embedded backend (being written).
