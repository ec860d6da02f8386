//! What greenhub shows about a live process, as data: the [`Snapshot`] schema, the vocabulary
//! of waits ([`WaitOn`], [`ObjectKind`], [`Interest`]), the [`Profile`] of its green threads
//! and the [`attach`] protocol.
//!
//! The runtime (`greenhub`) produces these; the inspector, a dashboard or a test reads them
//! with no dependency on the runtime or on `may`.
//!
//! ```
//! use greenhub_snapshot::{Snapshot, WaitOn, SCHEMA_VERSION};
//!
//! // An inspector reads a snapshot from the attach socket or the stats endpoint, then:
//! fn waiting_on_sleep(snap: &Snapshot) -> usize {
//!     assert_eq!(snap.schema_version, SCHEMA_VERSION);
//!     snap.threads.iter().filter(|t| t.waiting_on == Some(WaitOn::Sleep)).count()
//! }
//! # let _ = waiting_on_sleep;
//! ```

pub mod attach;
mod profile;
mod schema;
mod text;
mod trace;
mod wait;

pub use profile::{Half, Profile, ProfileEntry, TopFunction};
pub use schema::*;
pub use text::escape_controls;
pub use trace::{Trace, TraceEvent, TraceKind, TracedThread};
pub use wait::{Interest, MAX_KIND_NAME, MAX_KINDS, ObjectKind, WaitOn};
