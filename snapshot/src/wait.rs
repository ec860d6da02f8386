//! The vocabulary of waits: what a green thread waits on ([`WaitOn`]), the kinds of objects it
//! can wait on ([`ObjectKind`]) and the readiness a descriptor wait wants ([`Interest`]).

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a waiting green thread waits on, as the registry and the inspector show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitOn {
    /// A timer: `greenhub::sleep`.
    Sleep,
    /// The end of another green thread: `GreenThread::wait`.
    Join {
        /// The id of the awaited green thread.
        thread: u64,
    },
    /// A synchronization object, pool or call, identified by kind and id.
    Object {
        /// The kind of object.
        object: ObjectKind,
        /// The object's id (unique among all ids greenhub hands out).
        id: u64,
    },
    /// A file descriptor becoming readable or writable.
    Fd {
        /// The raw descriptor.
        fd: i32,
        /// Readable, writable or both.
        interest: Interest,
    },
}

impl fmt::Display for WaitOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitOn::Sleep => write!(f, "sleep"),
            WaitOn::Join { thread } => write!(f, "join #{thread}"),
            WaitOn::Object { object, id } => write!(f, "{} #{id}", object.name()),
            WaitOn::Fd { fd, interest } => write!(f, "fd {fd} ({})", interest.name()),
        }
    }
}

/// A kind of object green threads wait on: greenhub's own (the constants), or one a crate
/// names with [`ObjectKind::named`] (a thread pool's calls, a database pool).
///
/// A kind is a small copyable index into a process-wide table of names, so that a wait can
/// record it in one word. It serializes as its name.
///
/// ```
/// use greenhub_snapshot::ObjectKind;
///
/// let calls = ObjectKind::named("tpool call");
/// assert_eq!(calls, ObjectKind::named("tpool call"));
/// assert_eq!(calls.name(), "tpool call");
/// assert_eq!(ObjectKind::QUEUE.name(), "queue");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKind(u16);

/// The names of the kinds, by index; the first entries are the constants' names.
static KINDS: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());

/// How many names `KINDS` holds: read without the lock by [`ObjectKind::from_index`], which a
/// snapshot calls once per waiting thread. The table only grows.
static NAMED: AtomicUsize = AtomicUsize::new(0);

const BUILTIN: [&str; 7] = [
    "object",
    "event",
    "queue",
    "semaphore",
    "mutex",
    "greenpool",
    "server",
];

/// The most kinds a process names. Past it, [`ObjectKind::named`] answers [`ObjectKind::OTHER`]:
/// kinds are types of objects, a handful per crate, never one per object.
pub const MAX_KINDS: usize = 1024;

/// The longest kind name kept; a longer one is [`ObjectKind::OTHER`].
pub const MAX_KIND_NAME: usize = 64;

impl ObjectKind {
    /// Anything else.
    pub const OTHER: ObjectKind = ObjectKind(0);
    /// An event or async result.
    pub const EVENT: ObjectKind = ObjectKind(1);
    /// A queue or channel.
    pub const QUEUE: ObjectKind = ObjectKind(2);
    /// A semaphore.
    pub const SEMAPHORE: ObjectKind = ObjectKind(3);
    /// A green mutex.
    pub const MUTEX: ObjectKind = ObjectKind(4);
    /// A green thread pool (waiting for a free slot).
    pub const GREENPOOL: ObjectKind = ObjectKind(5);
    /// A server (waiting for its connections to finish).
    pub const SERVER: ObjectKind = ObjectKind(6);

    /// The kind called `name`, made on first use: the same name always gives the same kind.
    /// Call it once per kind (keep the result in a `static` `LazyLock`), not once per object.
    pub fn named(name: &'static str) -> ObjectKind {
        if let Some(kind) = ObjectKind::find(name) {
            return kind;
        }
        ObjectKind::intern(name, || name)
    }

    /// The kind's name ("event", "queue", "tpool call", ...).
    pub fn name(self) -> &'static str {
        let i = usize::from(self.0);
        if let Some(name) = BUILTIN.get(i) {
            return name;
        }
        let kinds = KINDS.read().unwrap_or_else(|e| e.into_inner());
        kinds.get(i - BUILTIN.len()).copied().unwrap_or(BUILTIN[0])
    }

    /// The kind's compact form, for storing it in an atomic word.
    pub fn index(self) -> u16 {
        self.0
    }

    /// The kind of a compact form made by [`ObjectKind::index`]; [`ObjectKind::OTHER`] for an
    /// index no kind has.
    pub fn from_index(index: u16) -> ObjectKind {
        let known = usize::from(index) < BUILTIN.len() + NAMED.load(Ordering::Acquire);
        if known {
            ObjectKind(index)
        } else {
            ObjectKind::OTHER
        }
    }

    fn find(name: &str) -> Option<ObjectKind> {
        if let Some(i) = BUILTIN.iter().position(|b| *b == name) {
            return Some(ObjectKind(i as u16));
        }
        let kinds = KINDS.read().unwrap_or_else(|e| e.into_inner());
        kinds
            .iter()
            .position(|k| *k == name)
            .map(|i| ObjectKind((i + BUILTIN.len()) as u16))
    }

    /// Adds a name to the table (made `'static` by `keep` only when it is really added).
    fn intern(name: &str, keep: impl FnOnce() -> &'static str) -> ObjectKind {
        if name.len() > MAX_KIND_NAME {
            return ObjectKind::OTHER;
        }
        let mut kinds = KINDS.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = kinds.iter().position(|k| *k == name) {
            return ObjectKind((i + BUILTIN.len()) as u16);
        }
        if BUILTIN.len() + kinds.len() >= MAX_KINDS {
            return ObjectKind::OTHER;
        }
        kinds.push(keep());
        NAMED.store(kinds.len(), Ordering::Release);
        ObjectKind((BUILTIN.len() + kinds.len() - 1) as u16)
    }
}

impl fmt::Debug for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKind({:?})", self.name())
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ObjectKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ObjectKind {
    /// A name read from another process becomes a kind of this one: known names map to their
    /// kind, new ones are added within [`MAX_KINDS`] and [`MAX_KIND_NAME`] (a reader facing a
    /// hostile producer keeps a bounded table), the rest read as [`ObjectKind::OTHER`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ObjectKind, D::Error> {
        // A kind read from another process is shown in terminals: kept escaped.
        let name = crate::escape_controls(&String::deserialize(d)?).into_owned();
        Ok(match ObjectKind::find(&name) {
            Some(kind) => kind,
            None => ObjectKind::intern(&name, || Box::leak(name.clone().into_boxed_str())),
        })
    }
}

/// Readiness a descriptor wait is interested in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interest {
    /// Readable.
    Read = 1,
    /// Writable.
    Write = 2,
    /// Readable or writable.
    ReadWrite = 3,
}

impl Interest {
    /// The interest of a compact form (`interest as u8`); anything unknown reads as both.
    pub fn from_bits(v: u8) -> Interest {
        match v {
            1 => Interest::Read,
            2 => Interest::Write,
            _ => Interest::ReadWrite,
        }
    }

    /// "read", "write" or "read/write".
    pub fn name(self) -> &'static str {
        match self {
            Interest::Read => "read",
            Interest::Write => "write",
            Interest::ReadWrite => "read/write",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind this module's tests name; named before the flood test fills the table,
    /// whichever test runs first.
    fn test_kind() -> ObjectKind {
        static KIND: std::sync::LazyLock<ObjectKind> =
            std::sync::LazyLock::new(|| ObjectKind::named("test kind"));
        *KIND
    }

    #[test]
    fn kinds_round_trip_through_json() {
        let mine = test_kind();
        let json = serde_json::to_string(&WaitOn::Object {
            object: mine,
            id: 3,
        })
        .unwrap();
        assert_eq!(json, r#"{"kind":"object","object":"test kind","id":3}"#);
        let back: WaitOn = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back,
            WaitOn::Object {
                object: mine,
                id: 3
            }
        );
        assert_eq!(ObjectKind::from_index(mine.index()), mine);
        assert_eq!(ObjectKind::from_index(u16::MAX), ObjectKind::OTHER);
    }

    #[test]
    fn hostile_kind_names_keep_the_table_bounded() {
        let named_before = test_kind();
        let long = "x".repeat(MAX_KIND_NAME + 1);
        let k: ObjectKind = serde_json::from_str(&format!("{long:?}")).unwrap();
        assert_eq!(k, ObjectKind::OTHER);
        for i in 0..MAX_KINDS + 10 {
            let _: ObjectKind = serde_json::from_str(&format!("\"flood {i}\"")).unwrap();
        }
        let late: ObjectKind = serde_json::from_str("\"one more\"").unwrap();
        assert_eq!(late, ObjectKind::OTHER);
        assert!(KINDS.read().unwrap().len() + BUILTIN.len() <= MAX_KINDS);
        // Kinds named before the flood keep their names.
        assert_eq!(ObjectKind::QUEUE.name(), "queue");
        assert_eq!(named_before.name(), "test kind");
    }
}
