//! Certificates and mutual TLS (placeholder; being written).
