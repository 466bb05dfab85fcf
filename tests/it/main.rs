//! Integration tests: drive the built `pyfcgi` binary with real peers (nginx, libfcgi's
//! cgi-fcgi, raw sockets, the bundled client). One test binary with modules keeps link time
//! down. Every peer runs on loopback or a Unix socket in a temp dir, bounded in time.

// Pedantic lints are for the shipped code; test plumbing favours directness.
#![allow(clippy::pedantic)]

mod support;

mod apache;
mod app_loading;
mod asgi;
mod asgi_edges;
mod bench;
mod cgi_fcgi;
mod cli;
mod fastapi;
mod faults;
mod hostile;
mod iis_cli;
mod iis_lifecycle;
mod iis_paths;
mod lifecycle;
mod lighttpd;
mod limits;
mod logs;
mod migration;
mod nginx;
mod python_nginx;
mod request_ids;
mod security;
mod settings;
mod starlette;
mod supervisor;
mod wheel;
mod wsgi;
