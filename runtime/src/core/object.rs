//! The [`Registration`] that keeps an object (anything that implements
//! [`Inspect`]) listed in the snapshot while it lives. The registry holds objects weakly.

use crate::core::registry::{Inspect, registry};

/// Keeps an object listed in the [`snapshot`](crate::inspect::snapshot) while the registration lives.
///
/// The registry holds only a weak reference, so the usual pattern is to build the object with
/// [`std::sync::Arc::new_cyclic`] and keep its registration inside it:
///
/// ```
/// use std::sync::{Arc, Weak};
/// use greenhub::ext::{Inspect, ObjectInfo, ObjectKind, Registration};
///
/// struct Gauge { reg: Registration }
/// impl Inspect for Gauge {
///     fn inspect(&self) -> ObjectInfo {
///         ObjectInfo::new(ObjectKind::named("gauge"), self.reg.id(), Some("boiler"), 0).count("level", 3)
///     }
/// }
///
/// let gauge = Arc::new_cyclic(|weak: &Weak<Gauge>| Gauge { reg: Registration::new(weak.clone()) });
/// let snap = greenhub::inspect::snapshot();
/// let seen = snap.objects.iter().find(|o| o.id == gauge.reg.id()).unwrap();
/// assert_eq!(seen.counts["level"], 3);
/// ```
#[derive(Debug)]
pub struct Registration {
    id: u64,
}

impl Registration {
    /// Lists `object` under a fresh id until the registration is dropped.
    pub fn new<O: Inspect + 'static>(object: std::sync::Weak<O>) -> Registration {
        let reg = registry();
        let id = reg.next_id();
        reg.insert_object(id, object);
        Registration { id }
    }

    /// The object's id: use it in [`WaitOn::Object`](crate::ext::WaitOn::Object).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        registry().remove_object(self.id);
    }
}
