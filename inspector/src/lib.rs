//! See inside a live greenhub process: its green threads (as a tree by parent, with what each
//! waits on and since when), timers, descriptors, tpool and database pools.
//!
//! Every process that uses greenhub listens on a private Unix socket (the
//! [`greenhub_snapshot::attach`] channel); this crate reads it, with no code change in the target and no
//! port to choose. The `inspector` binary is the command line: `inspector list`,
//! `inspector dump <pid>`, `inspector json <pid>`.
//!
//! ```
//! use std::time::Duration;
//!
//! let sleeper = greenhub::thread::Builder::new()
//!     .name("sleeper")
//!     .spawn(|| greenhub::sleep(Duration::from_millis(300)))
//!     .unwrap();
//! // Any process of this user could do this; here the process reads itself.
//! let mut client = greenhub_inspector::Client::connect(std::process::id()).unwrap();
//! let snapshot = client.snapshot().unwrap();
//! assert!(snapshot.threads.iter().any(|t| t.name.as_deref() == Some("sleeper")));
//! println!("{}", snapshot.format_run_info());
//! # sleeper.wait().unwrap().unwrap();
//! ```

mod client;
pub mod tui;

pub use client::{Client, InspectError, Listed, list};
