//! `greenhub-serve`: eventlet's Spawning rebuilt for greenhub programs. A master process,
//! which runs no green threads, binds the listening sockets (or takes them from systemd) and
//! runs N workers, each an ordinary program that takes its sockets in the `LISTEN_FDS`
//! convention ([`greenhub::net::listen_or_inherit`]) and says when it is ready
//! ([`greenhub::notify::ready`]). All workers accept on the same sockets.
//!
//! - SIGHUP reloads: one worker at a time is replaced by a new one, and the old one drains
//!   (SIGTERM: it stops accepting and finishes what it has) only once the new one is ready;
//!   a new worker that fails stops the reload and the old ones keep serving.
//! - SIGUSR2 upgrades the master's own binary: the new master takes the listening sockets
//!   over a Unix socket (`SCM_RIGHTS`), and the old one drains once the new one's workers
//!   are ready.
//! - SIGTERM stops gracefully, SIGINT and SIGQUIT fast; SIGTTIN and SIGTTOU add or remove a
//!   worker.
//! - Workers are recycled by resident memory, requests served and age; crashed ones are
//!   restarted with a back-off; stuck ones (silent heartbeat, a blocked worker thread) have
//!   their run info logged before they are killed.
//!
//! A worker program, which also runs alone:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let listener = greenhub::net::listen_or_inherit("127.0.0.1:8080").unwrap();
//! let server = greenhub_http::Builder::new()
//!     .serve(listener, |_req: greenhub_http::Request<'_>| greenhub_http::response::text("hi"))
//!     .unwrap();
//! greenhub::notify::ready().unwrap();
//! let term = greenhub::signal::Signals::new([libc::SIGTERM, libc::SIGINT]).unwrap();
//! term.wait().unwrap();
//! server.stop(Duration::from_secs(30));
//! ```
//!
//! served by `greenhub-serve --workers 4 --listen 127.0.0.1:8080 -- ./my-app`.

pub mod config;
mod dump;
pub mod listen;
pub mod master;
mod metrics;
mod notify;
mod signals;
pub mod spawn;
mod status;
mod upgrade;

pub use config::{Config, ConfigError, FileConfig};
pub use master::{Master, MasterError};
