//! HTTPS server: TLS, routing, handlers and middleware.
#![forbid(unsafe_code)]
