//! Keel's trust: fingerprints, TLS configurations, the manager CA, one rustls verifier for every
//! pin (host key, manager CA, CA probe), tokens, and the HTTPS client.
